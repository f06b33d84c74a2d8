"""Shared pieces of the distributed tests: a tiny model, a global batch and the MTP loss with
global denominators (written out here so the tests do not depend on wmtp.losses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wmtp.model.args import PRESETS
from wmtp.model.transformer import build_model
from wmtp.parallel.reduce import global_sum

ARGS = PRESETS["tiny"]
GLOBAL_BATCH = 4
SEQ = 16


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens, labels `[4, 16]`; labels hide a prompt of varying length (-100)."""
    g = torch.Generator().manual_seed(100 + step)
    tokens = torch.randint(0, ARGS.vocab_size, (GLOBAL_BATCH, SEQ), generator=g)
    labels = tokens.clone()
    for b in range(GLOBAL_BATCH):
        labels[b, : 2 + 2 * b] = -100
    return tokens, labels


def shard(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    per = x.shape[0] // world_size
    return x[rank * per:(rank + 1) * per]


def mtp_loss(model, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_k (1/H) Σ_t CE_k(t) / N_k with N_k counted over all ranks; the per-rank losses sum to the
    global loss. Projects `hidden` with `model.output.weight` outside forward, as the chunked loss does."""
    out = model(tokens)
    H = len(out.hidden)
    total = torch.zeros((), dtype=torch.float32)
    for k, h in enumerate(out.hidden, start=1):
        target = labels[:, k:]
        n_k = global_sum((target != -100).sum()).clamp(min=1)
        logits = F.linear(h[:, :-k], model.output.weight).float()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                             reduction="sum")
        total = total + ce / n_k / H
    return total


def fresh_model():
    return build_model(ARGS, seed=0)


def optimizer_for(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)

"""The experience phase (no grad): a raw batch becomes a `ScoredBatch` (DESIGN.md §7).

verifiable: critic snapshot values `V_old` → GAE advantages and returns (per sample, so it can run
    anywhere: in the learner (`colocated`) or in Ray actors (`async`)).
rho1: reference per-token losses `ℓ^ref(j)`, target-indexed (`[B, S]`, 0 where j is not a target).

Everything that needs global batch statistics (zscore, top-k) stays in the learner.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from wmtp.data.collator import Batch
from wmtp.losses.mtp import mtp_token_losses
from wmtp.model.args import ModelArgs
from wmtp.model.transformer import Transformer, build_model
from wmtp.model.value import ValueModel, build_value_model
from wmtp.recipes.interfaces import ScoredBatch
from wmtp.weighting.gae import compute_gae


@dataclass(frozen=True)
class ExperienceSpec:
    """All an experience worker needs (picklable): which models to build and how to score."""

    kind: Literal["verifiable", "rho1"]
    model_args: ModelArgs  # critic backbone args (verifiable) or reference model args (rho1)
    value_head: str = "linear"
    gamma: float = 0.99
    lam: float = 0.95
    reward_mode: str = "outcome"
    chunk_size: int = 1024


def build_scoring_model(spec: ExperienceSpec, state_dict: Mapping[str, Tensor] | None,
                        device: torch.device | str = "cpu") -> nn.Module:
    """The critic replica / frozen reference an experience worker scores with (eval mode)."""
    if spec.kind == "verifiable":
        model: nn.Module = build_value_model(spec.model_args, spec.value_head, device=device, seed=None)
    else:
        model = build_model(spec.model_args, device=device, seed=None)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def critic_experience(critic: ValueModel, batch: Batch, *, gamma: float, lam: float, reward_mode: str,
                      version: int) -> ScoredBatch:
    """V_old `[B, S]` and GAE (advantages, returns) `[B, S]` on response tokens, R = is_correct."""
    values = critic(batch.tokens)
    resp = batch.labels != -100
    adv, ret = compute_gae(values, resp, batch.is_correct.to(values.dtype), gamma, lam, reward_mode,
                           truncated=batch.truncated)
    return ScoredBatch(batch, values_old=values, advantages=adv, returns=ret, critic_version=version)


@torch.no_grad()
def reference_token_losses(reference: Transformer, batch: Batch, chunk_size: int = 1024) -> Tensor:
    """`ℓ^ref(j) = −log p_ref(x_j | x_{<j})`, target-indexed `[B, S]` (0 where j is no target)."""
    out = reference(batch.tokens, n_heads=1)
    next_token = mtp_token_losses(out.hidden, reference.output.weight, batch.labels, chunk_size)[..., 0]
    return torch.cat([torch.zeros_like(next_token[:, :1]), next_token[:, :-1]], dim=1)


def score_batch(spec: ExperienceSpec, model: nn.Module, batch: Batch, version: int = 0) -> ScoredBatch:
    """The one scoring function, used by the colocated scorer and by Ray experience actors."""
    if spec.kind == "verifiable":
        return critic_experience(model, batch, gamma=spec.gamma, lam=spec.lam, reward_mode=spec.reward_mode,
                                 version=version)
    return ScoredBatch(batch, ref_losses=reference_token_losses(model, batch, spec.chunk_size),
                       critic_version=version)


class ColocatedScorer:
    """`ExperienceScorer` in the learner process: a snapshot model scores batches on submit."""

    def __init__(self, spec: ExperienceSpec, state_dict: Mapping[str, Tensor] | None, device: torch.device):
        self.spec, self.device = spec, device
        self.model = build_scoring_model(spec, state_dict, device)
        self.version = 0
        self._ready: deque[ScoredBatch] = deque()

    def submit(self, batch: Batch) -> None:
        self._ready.append(score_batch(self.spec, self.model, batch, self.version))

    def get(self) -> ScoredBatch:
        return self._ready.popleft()

    def publish_critic(self, state_dict: Mapping[str, Tensor], version: int) -> None:
        self.model.load_state_dict(state_dict)
        self.version = version

    def close(self) -> None:
        self._ready.clear()


class ExperienceFeed:
    """Keeps the scorer `queue_depth` batches ahead of the learner, in data order.

    Checkpoints record the sampler position of the last *consumed* batch, so batches scored ahead
    but not yet learned from are drawn again after a resume (exact resume).
    """

    def __init__(self, stream, scorer, queue_depth: int = 0):
        self.stream, self.scorer, self.queue_depth = stream, scorer, queue_depth
        self._states: deque[tuple[dict, int]] = deque()
        self._consumed = stream.state_dict()

    def next(self) -> tuple[ScoredBatch, int]:
        """(scored batch, its real-token count)."""
        while len(self._states) < self.queue_depth + 1:
            self.scorer.submit(self.stream.next())
            self._states.append((self.stream.state_dict(), self.stream.last_tokens))
        self._consumed, tokens = self._states.popleft()
        return self.scorer.get(), tokens

    def state_dict(self) -> dict:
        return self._consumed

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
        self._consumed = state


class PrecomputedReferenceLosses:
    """Reference losses written by `wmtp data score-reference`: row r's target-indexed losses are
    `losses[offsets[r]:offsets[r+1]]` over its collated tokens (same tokenizer and max_seq_len)."""

    def __init__(self, path: str | Path, max_seq_len: int):
        from wmtp.data.errors import DataError

        path = Path(path)
        if not path.exists():
            raise DataError(f"data.reference_losses: {path} does not exist (run `wmtp data score-reference`)")
        data = np.load(path)
        self.offsets, self.losses = data["offsets"], data["losses"]
        if int(data["max_seq_len"]) != max_seq_len:
            raise DataError(f"{path} was scored with max_seq_len={int(data['max_seq_len'])}, "
                            f"but data.max_seq_len={max_seq_len}; rescore or change data.max_seq_len")

    def lookup(self, batch: Batch) -> Tensor:
        out = torch.zeros(batch.tokens.shape, dtype=torch.float32)
        for i, r in enumerate(batch.row.tolist()):
            row = self.losses[self.offsets[r]:self.offsets[r + 1]]
            out[i, :len(row)] = torch.from_numpy(row)
        return out.to(batch.tokens.device)


def write_reference_losses(reference: Transformer, data, out_path: str | Path, *, batch_size: int,
                           max_seq_len: int, chunk_size: int = 1024) -> Path:
    """Score every row of `data` (a `TrainingData`) once with the frozen reference (batch inference)."""
    n = len(data)
    pieces: list[np.ndarray] = []
    lengths = np.zeros(n, dtype=np.int64)
    device = next(reference.parameters()).device
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        batch = data.collate(rows).to(device)
        losses = reference_token_losses(reference, batch, chunk_size).float().cpu()
        for i, length in enumerate(batch.attention_mask.sum(1).tolist()):
            pieces.append(losses[i, :length].numpy())
            lengths[start + i] = length
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.npz")
    np.savez(tmp, offsets=offsets, losses=np.concatenate(pieces) if pieces else np.zeros(0, np.float32),
             max_seq_len=np.int64(max_seq_len))
    tmp.replace(out_path)
    return out_path

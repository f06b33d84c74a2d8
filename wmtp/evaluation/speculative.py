"""Self-speculative greedy decoding with the MTP heads (blockwise parallel decoding, Stern et al.
2018; Meta's MTP paper §3.2; Medusa).

One forward with all H heads at the last accepted position t gives head 1's greedy token y (always
right) and drafts d_2..d_H from heads 2..H (head k predicts token t+k). The next forward runs over
the block [y, d_2, ..., d_H]; head 1 at block position i is the greedy choice for the token after
it, so draft d_{i+2} is accepted while it equals that choice. With a accepted drafts the step emits
1 + a tokens, and the same forward already yields the next block: head 1 and the drafts at block
position a. The output is therefore exactly greedy decoding's, in fewer forwards.

KV-cache rollback is free: a forward writes the cache at `start_pos..start_pos+S-1` and attends
only to `[:start_pos+S]`, so entries of rejected drafts lie beyond the next block's start and are
overwritten before anyone reads them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class SpeculativeStats:
    """Counters over one or more decoded prompts."""

    steps: int = 0  # verification forwards (one per emitted block)
    accepted: int = 0  # drafted tokens accepted
    drafted: int = 0  # drafted tokens proposed
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Mean accepted drafted tokens per step (0 .. H-1)."""
        return self.accepted / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def merge(self, other: SpeculativeStats) -> None:
        for name in ("steps", "accepted", "drafted", "new_tokens", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@torch.no_grad()
def speculative_greedy(model, prompt: Sequence[int], *, max_new_tokens: int, eos_id: int | None = None
                       ) -> tuple[list[int], SpeculativeStats]:
    """Greedy continuation of one prompt using heads 2..H as drafters and head 1 as verifier.

    Returns the new tokens (ending with EOS when produced, at most max_new_tokens) and stats.
    """
    start = time.perf_counter()
    H = model.n_future_heads
    device = model.tok_embeddings.weight.device
    prompt = list(prompt)
    L = len(prompt)
    max_len = model.args.max_seq_len
    if L + max_new_tokens > max_len:
        raise ValueError(f"prompt ({L}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len={max_len}")
    cache = model.allocate_cache(1, min(max_len, L + max_new_tokens + H))
    stats = SpeculativeStats()

    # logits: [1, S, H, V]; row -1 holds head 1's next token and the heads' drafts.
    logits = model(torch.tensor([prompt], device=device), cache=cache, return_logits=True).logits
    preds = logits[0, -1].argmax(dim=-1).tolist()  # [H]: head k's token for position L-1+k
    out: list[int] = []
    pos = L  # where the block's first token (head 1's sure token) goes
    while True:
        out.append(preds[0])
        if preds[0] == eos_id or len(out) >= max_new_tokens:
            break
        # Draft only as far as the cache and the token budget reach.
        n_draft = min(H - 1, max_new_tokens - len(out), cache.max_seq_len - pos - 1)
        block = [preds[0], *preds[1:1 + n_draft]]
        logits = model(torch.tensor([block], device=device), start_pos=pos, cache=cache,
                       return_logits=True).logits
        block_preds = logits[0].argmax(dim=-1)  # [S, H]
        verify = block_preds[:, 0].tolist()  # head 1's greedy token after each block position
        accepted = 0
        while accepted < n_draft and block[accepted + 1] == verify[accepted]:
            accepted += 1
        stats.steps += 1
        stats.drafted += n_draft
        stats.accepted += accepted
        hit_eos = False
        for tok in block[1:1 + accepted]:
            out.append(tok)
            if tok == eos_id or len(out) >= max_new_tokens:
                hit_eos = True
                break
        if hit_eos:
            break
        preds = block_preds[accepted].tolist()
        pos += 1 + accepted
    stats.new_tokens = len(out)
    stats.seconds = time.perf_counter() - start
    return out, stats


def speculative_generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                         eos_id: int | None = None) -> tuple[list[list[int]], SpeculativeStats]:
    """Decode prompts one at a time (acceptance differs per sample, so no batching)."""
    total = SpeculativeStats()
    outs = []
    for p in prompts:
        out, stats = speculative_greedy(model, p, max_new_tokens=max_new_tokens, eos_id=eos_id)
        outs.append(out)
        total.merge(stats)
    return outs, total


__all__ = ["SpeculativeStats", "speculative_generate", "speculative_greedy"]

"""Head/label alignment for multi-token prediction: the one place where targets are shifted.

Convention (docs/MATH.md): `labels: [B, S] long`, `labels[b, j]` = token j if it is a response
token (solution body or EOS), else `IGNORE_INDEX` (prompt, BOS, padding on either side). Head k
(1..H) at position t predicts token t+k, so its target is `labels[b, t+k]`; it is valid when
t+k < S and that label is not ignored. Prompt `p0 p1`, response `a b c`, 3 heads:

| t | token | head 1        | head 2 | head 3 |
|---|-------|---------------|--------|--------|
| 0 | p0    | (p1: ignored) | a      | b      |
| 1 | p1    | a             | b      | c      |
| 2 | a     | b             | c      | —      |
| 3 | b     | c             | —      | —      |
| 4 | c     | —             | —      | —      |

Index `[..., k-1]` of every `[B, S, H]` tensor here is head k. With left padding, pass
`attention_mask` (`[B, S]` bool, True = real token): a padding position must not be the *source*
of a prediction (its head-3 target may already be a response token), and labels alone cannot tell.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100


def _shift_left(x: Tensor, k: int, fill: float | int | bool) -> Tensor:
    """`out[:, t] = x[:, t+k]` for t+k < S, else `fill`. x: `[B, S, ...]`."""
    if k == 0:
        return x
    out = torch.full_like(x, fill)
    if k < x.shape[1]:
        out[:, : x.shape[1] - k] = x[:, k:]
    return out


def _check_heads(n_heads: int) -> None:
    if not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")


def shift_labels(labels: Tensor, n_heads: int, attention_mask: Tensor | None = None) -> Tensor:
    """Per-head targets. labels: `[B, S]` → `[B, S, H]`, `out[b, t, k-1] = labels[b, t+k]` or -100
    (also -100 where `attention_mask[b, t]` is False, i.e. t is padding)."""
    _check_heads(n_heads)
    out = torch.stack([_shift_left(labels, k, IGNORE_INDEX) for k in range(1, n_heads + 1)], dim=-1)
    if attention_mask is not None:
        if attention_mask.shape != labels.shape:
            raise ValueError(f"attention_mask must be [B, S]={list(labels.shape)}, got {list(attention_mask.shape)}")
        out = out.masked_fill(~attention_mask.bool()[..., None], IGNORE_INDEX)
    return out


def valid_mask(labels: Tensor, n_heads: int, attention_mask: Tensor | None = None) -> Tensor:
    """`M_k(t)`: labels `[B, S]` → `[B, S, H]` bool, True where head k has a real target at t."""
    return shift_labels(labels, n_heads, attention_mask) != IGNORE_INDEX


def count_valid_targets(labels: Tensor, n_heads: int, attention_mask: Tensor | None = None) -> Tensor:
    """`N_k` of this batch: labels `[B, S]` → `[H]` long. Sum it over ranks and micro-batches
    (all-reduce SUM) to get the global denominators of `mtp_cross_entropy`."""
    return valid_mask(labels, n_heads, attention_mask).sum(dim=(0, 1))


def align_target_weights(weights: Tensor, n_heads: int) -> Tensor:
    """Target-indexed weights to per-head weights: `[B, S]` → `[B, S, H]`, `W_k(t) = w_{t+k}`
    (0 where t+k ≥ S). Used by the verifiable scheme, whose weight belongs to the predicted token."""
    _check_heads(n_heads)
    return torch.stack([_shift_left(weights, k, 0) for k in range(1, n_heads + 1)], dim=-1)


def to_next_token(x: Tensor) -> Tensor:
    """Position-indexed → target-indexed: `[B, S]` → `[B, S]`, `out[:, j] = x[:, j-1]` (0 at j=0).
    What position t computes about token t+1 (head 1's loss or weight, the critic's value of the
    prefix `x_{≤t}`) moves to index t+1. Gradients flow through."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def state_values(values: Tensor) -> Tensor:
    """Value of the state before each token: `[B, S]` → `[B, S]`, `out[:, j] = values[:, j-1]`
    (0 at j=0). GAE and the value losses index everything on response tokens j, whose state is
    the prefix `x_{<j}` scored by the critic at position j-1. Gradients flow through."""
    return to_next_token(values)

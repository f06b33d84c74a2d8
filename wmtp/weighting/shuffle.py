"""Shuffled-weights control: the same token weights, permuted within each sequence's response.

A weighted run differs from the uniform baseline in two ways at once: *which* tokens get more
weight, and the weight distribution itself (its spread changes the effective learning rate even
at mean 1). Permuting the weights of each row among that row's valid targets keeps the second
(same multiset of weights per sequence, so the same mean, spread and per-sequence mass) and
destroys the first. If shuffled weights do as well as the real ones, the placement carried no
information.

    shuffle_within_rows(weights [B, S] | [B, S, H], mask same shape, generator) -> same shape

Pure torch; deterministic under `generator` (the recipes seed it with the run seed, rank and step,
so a resumed run draws the same permutations).
"""

from __future__ import annotations

import torch
from torch import Tensor


def shuffle_within_rows(weights: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Permute `weights` among the True positions of `mask`, independently per row (and per head
    for `[B, S, H]`: heads are permuted along S separately). Positions outside `mask` keep their
    value. weights/mask `[B, S]` or `[B, S, H]` → a new tensor of weights' shape and dtype."""
    if weights.shape != mask.shape or weights.dim() not in (2, 3):
        raise ValueError(f"weights and mask must both be [B, S] or [B, S, H]; got {list(weights.shape)} "
                         f"and {list(mask.shape)}")
    if weights.dim() == 3:  # heads as extra rows: [B, S, H] → [B·H, S]
        B, S, H = weights.shape
        flat = shuffle_within_rows(weights.permute(0, 2, 1).reshape(B * H, S),
                                   mask.permute(0, 2, 1).reshape(B * H, S), generator)
        return flat.reshape(B, H, S).permute(0, 2, 1).contiguous()
    w, m = weights.detach(), mask.bool()
    B, S = w.shape
    position = torch.arange(S, device=w.device, dtype=torch.float64).expand(B, S)
    # Valid positions first (ascending), then invalid ones (ascending): where values land.
    dest = torch.argsort(torch.where(m, position, position + S), dim=1, stable=True)
    # Valid positions first in random order, then invalid ones (ascending): where values come from.
    keys = torch.rand(B, S, generator=generator, dtype=torch.float64, device="cpu").to(w.device)
    src = torch.argsort(torch.where(m, keys, 2.0 + position), dim=1, stable=True)
    # The i-th valid slot takes a random valid value; invalid slots map to themselves.
    return w.scatter(1, dest, w.gather(1, src))


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of one optimizer step's shuffle (same draws after a resume)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + rank) * 1_000_003 + step)
    return g


__all__ = ["shuffle_within_rows", "step_generator"]

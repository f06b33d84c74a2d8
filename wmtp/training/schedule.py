"""Learning-rate schedule: linear warm-up, then cosine decay to `min_lr_ratio` of the peak.

Multiplier of the peak LR for optimizer step index s (0-based, the s-th `optimizer.step()`):
    s <  W:  (s + 1) / W                                  (the first step already moves)
    s >= W:  r + (1 - r) * (1 + cos(pi * p)) / 2,  p = min(1, (s - W) / max(1, T - W))
with W = warmup_steps, T = total_steps, r = min_lr_ratio. At s = W it is 1; at s >= T it is r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR


@dataclass
class WarmupCosine:
    """The multiplier as a picklable callable (LambdaLR saves its fields in `state_dict`)."""

    warmup_steps: int
    total_steps: int
    min_lr_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """A `LambdaLR` applying `WarmupCosine` to every param group; call `.step()` after each
    `optimizer.step()`."""
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))

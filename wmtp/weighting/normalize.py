"""Masked normalisers of advantages / excess losses: `zscore`, `ema`, `none`.

All take `x: [B, S]` (or any shape) and a same-shaped bool `mask` of valid entries and return a
tensor of x's shape with 0 outside the mask. Statistics are over the *global* batch when the
caller supplies them: either precomputed `stats = (sum, sum_sq, count)` over all ranks, or a
`reduce_fn` that all-reduces (SUM) a float64 `[3]` tensor of local (sum, sum_sq, count) — e.g.
`lambda t: (dist.all_reduce(t), t)[1]`. This package never touches torch.distributed itself.
Standard deviations are population (÷ count), so normalised values have exactly mean 0, std 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

ReduceFn = Callable[[Tensor], Tensor]
Stats = tuple[float | Tensor, float | Tensor, float | Tensor]

EPS = 1e-8


def masked_moments(x: Tensor, mask: Tensor, stats: Stats | None = None,
                   reduce_fn: ReduceFn | None = None) -> Tensor:
    """Global `(sum, sum_sq, count)` as a float64 `[3]` tensor (precomputed `stats` win)."""
    if stats is not None:
        return torch.tensor([float(s) for s in stats], dtype=torch.float64, device=x.device)
    xd = x.detach().double()
    m = mask.bool()
    local = torch.stack([(xd * m).sum(), (xd * xd * m).sum(), m.sum().double()])
    return reduce_fn(local) if reduce_fn is not None else local


def mean_std(moments: Tensor) -> tuple[Tensor, Tensor]:
    """`[3]` (sum, sum_sq, count) → (mean, population std), float64 0-dim tensors; 0, 0 if empty."""
    s, ss, n = moments.unbind()
    n = n.clamp_min(1.0)
    mean = s / n
    var = (ss / n - mean * mean).clamp_min(0.0)
    return mean, var.sqrt()


def _apply(x: Tensor, mask: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    z = (x.detach().double() - mean) / (std + EPS)
    return torch.where(mask.bool(), z, torch.zeros_like(z)).to(x.dtype)


def zscore(x: Tensor, mask: Tensor, *, stats: Stats | None = None, reduce_fn: ReduceFn | None = None) -> Tensor:
    """`(x − mean) / (std + 1e-8)` over valid entries of the global batch; 0 outside the mask."""
    mean, std = mean_std(masked_moments(x, mask, stats, reduce_fn))
    return _apply(x, mask, mean, std)


class Normalizer(Protocol):
    """What `advantage_weights` and the weighting schemes call."""

    def __call__(self, x: Tensor, mask: Tensor, *, update: bool = True, stats: Stats | None = None,
                 reduce_fn: ReduceFn | None = None) -> Tensor: ...


class ZScoreNormalizer:
    """Stateless batch zscore (`update` is accepted and ignored)."""

    def __call__(self, x: Tensor, mask: Tensor, *, update: bool = True, stats: Stats | None = None,
                 reduce_fn: ReduceFn | None = None) -> Tensor:
        return zscore(x, mask, stats=stats, reduce_fn=reduce_fn)


class IdentityNormalizer:
    """`none`: x unchanged inside the mask, 0 outside."""

    def __call__(self, x: Tensor, mask: Tensor, *, update: bool = True, stats: Stats | None = None,
                 reduce_fn: ReduceFn | None = None) -> Tensor:
        return torch.where(mask.bool(), x.detach(), torch.zeros_like(x))


class EMANormalizer:
    """Running mean/std: EMAs of the first and second moments of the (global) batch.

    On `update=True`: the first batch initialises the EMAs, later ones do
    `m ← momentum·m + (1−momentum)·batch` (so the running variance also sees shifts of the batch
    mean). During the first `warmup_steps` updates — and whenever no update has happened yet — x is
    normalised with its own batch statistics; afterwards with the running ones. `update=False`
    (validation, evaluation) never changes the state. State is plain floats: `state_dict()` /
    `load_state_dict()` go into the training checkpoint.

    Staged updates: `update=True` normalises with the updated statistics but only *stages* the new
    state; `commit()` applies it once the step is accepted, `discard()` drops it (the non-finite
    guard skipped the step, so a skipped batch — NaN advantages included — never moves the EMA).
    A later `update=True` call replaces an uncommitted stage. `state_dict()` holds committed state.
    """

    def __init__(self, momentum: float = 0.99, warmup_steps: int = 10) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.momentum = float(momentum)
        self.warmup_steps = int(warmup_steps)
        self.mean = 0.0
        self.sq_mean = 0.0
        self.steps = 0
        self.staged: tuple[float, float, int] | None = None

    @property
    def std(self) -> float:
        std: float = max(self.sq_mean - self.mean * self.mean, 0.0) ** 0.5
        return std

    def __call__(self, x: Tensor, mask: Tensor, *, update: bool = True, stats: Stats | None = None,
                 reduce_fn: ReduceFn | None = None) -> Tensor:
        moments = masked_moments(x, mask, stats, reduce_fn)
        b_mean, b_std = mean_std(moments)
        mean, sq_mean, steps = self.mean, self.sq_mean, self.steps
        if update and moments[2].item() > 0:
            bm, bsq = b_mean.item(), (b_std * b_std + b_mean * b_mean).item()
            if steps == 0:
                mean, sq_mean = bm, bsq
            else:
                a = self.momentum
                mean, sq_mean = a * mean + (1 - a) * bm, a * sq_mean + (1 - a) * bsq
            steps += 1
            self.staged = (mean, sq_mean, steps)
        if steps == 0 or steps <= self.warmup_steps:
            return _apply(x, mask, b_mean, b_std)
        std = max(sq_mean - mean * mean, 0.0) ** 0.5
        return _apply(x, mask, torch.tensor(mean, dtype=torch.float64, device=x.device),
                      torch.tensor(std, dtype=torch.float64, device=x.device))

    def commit(self) -> None:
        """Apply the staged update (the step that computed it was accepted)."""
        if self.staged is not None:
            self.mean, self.sq_mean, self.steps = self.staged
            self.staged = None

    def discard(self) -> None:
        """Drop the staged update (the step was skipped)."""
        self.staged = None

    def state_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "sq_mean": self.sq_mean, "steps": self.steps,
                "momentum": self.momentum, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        missing = {"mean", "sq_mean", "steps"} - set(state)
        if missing:
            raise KeyError(f"EMANormalizer state is missing {sorted(missing)}")
        self.mean, self.sq_mean, self.steps = float(state["mean"]), float(state["sq_mean"]), int(state["steps"])
        self.staged = None
        self.momentum = float(state.get("momentum", self.momentum))
        self.warmup_steps = int(state.get("warmup_steps", self.warmup_steps))


# Factories take the normaliser options; the stateless ones have none to use.
NORMALIZERS: dict[str, Callable[..., Normalizer]] = {
    "zscore": lambda **_: ZScoreNormalizer(),
    "ema": EMANormalizer,
    "none": lambda **_: IdentityNormalizer(),
}


def build_normalizer(name: str, **kwargs: float) -> Normalizer:
    """`zscore` | `ema` (kwargs: momentum, warmup_steps) | `none`."""
    if name not in NORMALIZERS:
        raise ValueError(f"unknown normalizer {name!r}; allowed: {sorted(NORMALIZERS)}")
    return NORMALIZERS[name](**kwargs)

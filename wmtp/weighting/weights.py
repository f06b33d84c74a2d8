"""Token weights from advantages: `w = clip(exp(Â / T), clip_min, clip_max)`, optionally rescaled
to mean 1 over valid tokens (DESIGN.md §3).

Order: normalise → exp → clip → renormalise. Renormalising *after* clipping makes the mean exactly
1 (a weighted run keeps the baseline's effective learning rate); the price is that the final
weights may leave [clip_min, clip_max] by the common factor 1/mean(clipped w), while their ratios
stay within clip_max / clip_min. Weights are positive whenever clip_min > 0 (exp is positive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from wmtp.weighting.normalize import Normalizer, ReduceFn, Stats, ZScoreNormalizer


@dataclass
class WeightStats:
    """0-dim float64 tensors over valid tokens (global when `reduce_fn` is given for the means;
    std/min/max/entropy are local). `entropy` is the normalised entropy of p = w / Σw, in [0, 1]
    (1 = uniform weights)."""

    mean_before_renorm: Tensor
    mean: Tensor
    std: Tensor
    min: Tensor
    max: Tensor
    frac_clipped: Tensor
    entropy: Tensor

    def to_dict(self, prefix: str = "weights/") -> dict[str, float]:
        """Plain floats for a MetricLogger (one host sync)."""
        names = [f.name for f in fields(self)]
        vals = torch.stack([getattr(self, n).double() for n in names]).tolist()
        return {f"{prefix}{n}": v for n, v in zip(names, vals)}


def weight_stats(w: Tensor, mask: Tensor, mean_before: Tensor, frac_clipped: Tensor) -> WeightStats:
    """Statistics of weights `w` over `mask` (same shape)."""
    m = mask.bool()
    vals = w.detach().double()[m]
    z = torch.zeros((), dtype=torch.float64, device=w.device)
    if vals.numel() == 0:
        return WeightStats(mean_before, z, z, z, z, frac_clipped, z)
    p = vals / vals.sum().clamp_min(1e-300)
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum()
    norm_ent = ent / math.log(vals.numel()) if vals.numel() > 1 else torch.ones((), dtype=torch.float64)
    return WeightStats(
        mean_before_renorm=mean_before, mean=vals.mean(), std=vals.std(unbiased=False),
        min=vals.min(), max=vals.max(), frac_clipped=frac_clipped, entropy=norm_ent.to(w.device),
    )


def _global_mean(x: Tensor, mask: Tensor, reduce_fn: ReduceFn | None) -> tuple[Tensor, Tensor]:
    m = mask.bool()
    local = torch.stack([(x.double() * m).sum(), m.sum().double()])
    tot = reduce_fn(local) if reduce_fn is not None else local
    return tot[0] / tot[1].clamp_min(1.0), tot[1]


def exp_clip_weights(scores: Tensor, mask: Tensor, temperature: float, clip_min: float, clip_max: float,
                     renormalize: bool, reduce_fn: ReduceFn | None = None) -> tuple[Tensor, WeightStats]:
    """`clip(exp(scores / T), min, max)`, renormalised to mean 1 if asked. scores, mask: same
    shape; returns detached weights (0 outside the mask) and stats."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= clip_min <= clip_max:
        raise ValueError(f"need 0 <= clip_min <= clip_max, got clip_min={clip_min}, clip_max={clip_max}")
    m = mask.bool()
    raw = torch.exp(scores.detach().double() / temperature)
    w = raw.clamp(clip_min, clip_max)
    clipped = ((raw < clip_min) | (raw > clip_max)) & m
    frac, _ = _global_mean(clipped.double(), m, reduce_fn)
    w = torch.where(m, w, torch.zeros_like(w))
    mean_before, _ = _global_mean(w, m, reduce_fn)
    if renormalize:  # no host sync: a zero mean (no valid token) leaves w as it is
        w = w / torch.where(mean_before > 0, mean_before, torch.ones_like(mean_before))
    return w.to(scores.dtype), weight_stats(w, m, mean_before, frac)


def advantage_weights(
    adv: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
    clip_min: float = 0.1,
    clip_max: float = 5.0,
    renormalize: bool = True,
    normalizer: Normalizer | None = None,
    *,
    update: bool = True,
    stats: Stats | None = None,
    reduce_fn: ReduceFn | None = None,
) -> tuple[Tensor, WeightStats]:
    """Verifiable weights. adv `[B, S]` (GAE advantages on response tokens), mask `[B, S]` bool →
    (weights `[B, S]`, target-indexed, detached, 0 outside mask; WeightStats). `normalizer`
    default zscore; `update=False` keeps an EMA normaliser frozen (validation); `stats`/`reduce_fn`
    make the normaliser's and the renormalisation's statistics global."""
    normalizer = normalizer if normalizer is not None else ZScoreNormalizer()
    a_hat = normalizer(adv.detach(), mask, update=update, stats=stats, reduce_fn=reduce_fn)
    return exp_clip_weights(a_hat, mask, temperature, clip_min, clip_max, renormalize, reduce_fn)

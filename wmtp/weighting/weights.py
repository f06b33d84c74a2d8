"""Token weights from advantages: `w = clip(exp(Â / T), clip_min, clip_max)`, optionally rescaled
to mean 1 over valid tokens (docs/MATH.md).

Order: normalise → exp → clip → renormalise. Renormalising *after* clipping makes the mean exactly
1 (a weighted run keeps the baseline's effective learning rate); the price is that the final
weights may leave [clip_min, clip_max] by the common factor 1/mean(clipped w), while their ratios
stay within clip_max / clip_min. Weights are positive whenever clip_min > 0 (exp is positive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor

from wmtp.weighting.normalize import Normalizer, ReduceFn, Stats, ZScoreNormalizer


@dataclass
class WeightStats:
    """0-dim float64 tensors over valid tokens, global over ranks when `reduce_fn` (SUM) — and,
    for min/max, `reduce_max_fn` (MAX) — are given; without them, over this process's tokens.
    `entropy` is the normalised entropy of p = w / Σw over all valid tokens, in [0, 1] (1 = uniform
    weights): `H = log S − Σ w log w / S` with S = Σw, divided by log N — sums only, so it is exact
    across ranks."""

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


def weight_stats(w: Tensor, mask: Tensor, mean_before: Tensor, frac_clipped: Tensor,
                 reduce_fn: ReduceFn | None = None, reduce_max_fn: ReduceFn | None = None) -> WeightStats:
    """Statistics of weights `w` over `mask` (same shape): moments summed by `reduce_fn`,
    `[max w, max −w]` by `reduce_max_fn` (each None: this process only)."""
    m = mask.bool()
    wd = torch.where(m, w.detach().double(), torch.zeros((), dtype=torch.float64, device=w.device))
    wlogw = torch.where(m & (wd > 0), wd * torch.log(wd.clamp_min(1e-300)), torch.zeros_like(wd))
    sums = torch.stack([wd.sum(), (wd * wd).sum(), wlogw.sum(), m.sum().double()])
    if reduce_fn is not None:
        sums = reduce_fn(sums)
    lo_hi = torch.stack([torch.where(m, wd, torch.full_like(wd, -math.inf)).max() if wd.numel() else
                         torch.tensor(-math.inf, dtype=torch.float64, device=w.device),
                         torch.where(m, -wd, torch.full_like(wd, -math.inf)).max() if wd.numel() else
                         torch.tensor(-math.inf, dtype=torch.float64, device=w.device)])
    if reduce_max_fn is not None:
        lo_hi = reduce_max_fn(lo_hi)
    total, total_sq, total_wlogw, n = sums.unbind()
    # No host sync (this runs every training step): the empty and one-target cases by torch.where.
    z = torch.zeros((), dtype=torch.float64, device=w.device)
    some = n > 0
    mean = torch.where(some, total / n.clamp_min(1), z)
    std = torch.where(some, (total_sq / n.clamp_min(1) - mean * mean).clamp_min(0.0).sqrt(), z)
    s_pos = total.clamp_min(1e-300)
    ent = torch.log(s_pos) - total_wlogw / s_pos
    norm_ent = torch.where(n > 1, ent / torch.log(n.clamp_min(2)), torch.where(some, z + 1, z))
    return WeightStats(mean_before_renorm=mean_before, mean=mean, std=std, min=torch.where(some, -lo_hi[1], z),
                       max=torch.where(some, lo_hi[0], z), frac_clipped=frac_clipped, entropy=norm_ent)


def _global_mean(x: Tensor, mask: Tensor, reduce_fn: ReduceFn | None) -> tuple[Tensor, Tensor]:
    m = mask.bool()
    local = torch.stack([(x.double() * m).sum(), m.sum().double()])
    tot = reduce_fn(local) if reduce_fn is not None else local
    return tot[0] / tot[1].clamp_min(1.0), tot[1]


def exp_clip_weights(scores: Tensor, mask: Tensor, temperature: float, clip_min: float, clip_max: float,
                     renormalize: bool, reduce_fn: ReduceFn | None = None,
                     reduce_max_fn: ReduceFn | None = None) -> tuple[Tensor, WeightStats]:
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
    return w.to(scores.dtype), weight_stats(w, m, mean_before, frac, reduce_fn, reduce_max_fn)


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
    reduce_max_fn: ReduceFn | None = None,
) -> tuple[Tensor, WeightStats]:
    """Verifiable weights. adv `[B, S]` (GAE advantages on response tokens), mask `[B, S]` bool →
    (weights `[B, S]`, target-indexed, detached, 0 outside mask; WeightStats). `normalizer`
    default zscore; `update=False` keeps an EMA normaliser frozen (validation); `stats`/`reduce_fn`
    make the normaliser's and the renormalisation's statistics global; `reduce_max_fn` (all-reduce
    MAX) makes the weights' min/max global too."""
    normalizer = normalizer if normalizer is not None else ZScoreNormalizer()
    a_hat = normalizer(adv.detach(), mask, update=update, stats=stats, reduce_fn=reduce_fn)
    return exp_clip_weights(a_hat, mask, temperature, clip_min, clip_max, renormalize, reduce_fn, reduce_max_fn)


class WeightingKnobs(Protocol):
    """What `value_weights` reads of `stage2.value_weighting` (config.schema.ValueWeightingConfig;
    a Protocol so this package stays pure torch). Read-only properties, not attributes: a mutable
    protocol attribute is invariant, so the config's `Literal` source would not satisfy `str`."""

    @property
    def source(self) -> str: ...
    @property
    def shuffle(self) -> bool: ...
    @property
    def weight_temperature(self) -> float: ...
    @property
    def weight_clip_min(self) -> float: ...
    @property
    def weight_clip_max(self) -> float: ...
    @property
    def renormalize(self) -> bool: ...


def position_advantages(values: Tensor, response: Tensor, outcome: Tensor, mean_value: Tensor, gamma: float,
                        lam: float, reward_mode: str, truncated: Tensor | None = None) -> Tensor:
    """The position-only control's advantages `[B, S]`: the same GAE with a constant critic,
    V ≡ `mean_value` (the critic's mean over the global batch's response states), so they depend on
    the target's position and the solution's outcome only. values `[B, S]` give shape and dtype."""
    from wmtp.weighting.gae import compute_gae

    constant = mean_value.to(values.dtype).expand_as(values).clone()
    return compute_gae(constant, response, outcome.to(values.dtype), gamma, lam, reward_mode, truncated=truncated)[0]


def value_weights(vw: WeightingKnobs, advantages: Tensor | None, mask: Tensor, *, normalizer: Normalizer | None = None, update: bool = True,
                  reduce_fn: ReduceFn | None = None, reduce_max_fn: ReduceFn | None = None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, WeightStats]:
    """`stage2.value_weighting` (`vw`) → the target-indexed token weights `[B, S]` of one global
    batch and their statistics: weight 1 on every target (`source: uniform`), else
    `advantage_weights` of `advantages` (the critic's GAE, or `position_advantages` for
    `source: position`; None only for `source: uniform`), then permuted within each row when
    `vw.shuffle` (`generator`). The one implementation the verifiable recipe trains with and the
    study's diagnostics measure."""
    from wmtp.weighting.shuffle import shuffle_within_rows

    if vw.source == "uniform":
        w = mask.to(torch.float32)
        one = torch.ones((), dtype=torch.float64, device=w.device)
        stats = weight_stats(w, mask, one, one * 0, reduce_fn, reduce_max_fn)
    else:
        if advantages is None:
            raise ValueError(f"stage2.value_weighting.source={vw.source} needs advantages")
        w, stats = advantage_weights(advantages, mask, vw.weight_temperature, vw.weight_clip_min, vw.weight_clip_max,
                                     vw.renormalize, normalizer, update=update, reduce_fn=reduce_fn,
                                     reduce_max_fn=reduce_max_fn)
    if vw.shuffle:
        w = shuffle_within_rows(w, mask, generator)
    return w, stats

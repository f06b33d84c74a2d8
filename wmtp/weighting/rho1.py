"""Rho-1 token weights from excess loss (docs/MATH.md).

`e_k(t) = ℓ_k^policy(t) − ℓ^ref(t+k)`: policy per-(position, head) losses `[B, S, H]`
(`wmtp.losses.mtp.mtp_token_losses`) minus the frozen reference's *target-indexed* per-token loss
`ℓ^ref(j) = −log p_ref(x_j | x_{<j})`, `[B, S]`, aligned with `align_target_weights`.

- `topk`: per head, keep the top `ratio` of the valid head-k targets of the global batch by e
  (count `ceil(ratio·N_k)`, ties at the threshold all kept); kept weights are `N_k / kept_k` so
  the head's weighted CE is the mean CE over the selected tokens (Rho-1's objective) and the mean
  weight is 1. `keep_first_head`: head 1 keeps everything (weight 1).
- `continuous`: `clip(exp(zscore_k(e) / T), min, max)`, zscore per head over its valid targets.
Multi-rank: pass `gather_fn(x [n]) -> [n_global]` (concatenate every rank's values) for topk, and
`reduce_fn` (all-reduce SUM of a float64 `[3]`) for continuous. Weights are detached.
`step_rho1_stats` turns the micro-batches' stats into the step's global ones (every micro-batch,
every rank, through `reduce_fn`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from wmtp.losses.alignment import align_target_weights, valid_mask
from wmtp.weighting.normalize import ReduceFn, zscore

GatherFn = Callable[[Tensor], Tensor]
RHO1_MODES = ("topk", "continuous")


@dataclass
class Rho1Stats:
    """Per head `[H]` (detached, float64): kept_fraction (topk: selected share, continuous: share
    not clipped), mean_weight, mean_excess — over this batch's valid targets (`rho1_weights`), or
    over the step's global batch (`step_rho1_stats`, what the recipe logs)."""

    kept_fraction: Tensor
    mean_weight: Tensor
    mean_excess: Tensor

    def to_dict(self, prefix: str = "rho1/") -> dict[str, float]:
        out = {}
        for name in ("kept_fraction", "mean_weight", "mean_excess"):
            for k, v in enumerate(getattr(self, name).tolist(), start=1):
                out[f"{prefix}{name}/head{k}"] = v
        return out


def step_rho1_stats(parts: Sequence[tuple[Rho1Stats, Tensor]], reduce_fn: ReduceFn | None = None) -> Rho1Stats:
    """The Rho1Stats of a whole optimizer step, over its global batch, from each micro-batch's
    `(stats, n_valid)` (`n_valid` `[H]`: its valid head-k targets). Each micro-batch's means are
    turned back into sums (× n_valid); the sums `[4, H]` (kept, Σw, Σe, n) are added over
    micro-batches and all-reduced by `reduce_fn` (SUM over ranks), then divided by the global
    count: on N ranks the values equal one process holding the same micro-batches whole."""
    sums = torch.stack([torch.stack([s.kept_fraction, s.mean_weight, s.mean_excess]).double() * n.double()
                        for s, n in parts]).sum(0)
    counts = torch.stack([n.double() for _, n in parts]).sum(0)
    total = torch.cat([sums, counts[None]])
    if reduce_fn is not None:
        total = reduce_fn(total)
    n = total[3].clamp_min(1)
    return Rho1Stats(kept_fraction=total[0] / n, mean_weight=total[1] / n, mean_excess=total[2] / n)


def excess_loss(policy_losses: Tensor, ref_losses: Tensor, labels: Tensor,
                attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(e `[B, S, H]` float64, 0 where invalid; valid `[B, S, H]` bool)."""
    H = policy_losses.shape[-1]
    if policy_losses.shape[:2] != labels.shape or ref_losses.shape != labels.shape:
        raise ValueError(f"policy_losses must be [B, S, H] and ref_losses [B, S] with [B, S]={list(labels.shape)}; "
                         f"got {list(policy_losses.shape)} and {list(ref_losses.shape)}")
    valid = valid_mask(labels, H, attention_mask)
    e = policy_losses.detach().double() - align_target_weights(ref_losses.detach().double(), H)
    return torch.where(valid, e, torch.zeros_like(e)), valid


def _topk(e: Tensor, valid: Tensor, ratio: float, keep_first_head: bool,
          gather_fn: GatherFn | None) -> tuple[Tensor, Tensor]:
    H = e.shape[-1]
    w = torch.zeros_like(e)
    kept = torch.zeros(H, dtype=torch.float64, device=e.device)
    for k in range(H):
        v = valid[..., k]
        if keep_first_head and k == 0:
            w[..., 0] = v.double()
            kept[0] = 1.0
            continue
        local = e[..., k][v]
        pool = gather_fn(local) if gather_fn is not None else local
        n = pool.numel()
        if n == 0:
            continue
        n_keep = min(n, math.ceil(ratio * n - 1e-9))
        threshold = torch.topk(pool, n_keep).values[-1]
        n_sel = (pool >= threshold).sum()  # ties at the threshold are all kept (global count)
        sel = v & (e[..., k] >= threshold)
        w[..., k] = sel.double() * (n / n_sel.double())
        kept[k] = sel.sum().double() / v.sum().clamp_min(1)  # float64: an int ratio is float32
    return w, kept


def rho1_weights(policy_losses: Tensor, ref_losses: Tensor, labels: Tensor, *, mode: str = "topk",
                 ratio: float = 0.6, keep_first_head: bool = False, temperature: float = 1.0,
                 clip_min: float = 0.1, clip_max: float = 5.0, attention_mask: Tensor | None = None,
                 gather_fn: GatherFn | None = None, reduce_fn: ReduceFn | None = None) -> tuple[Tensor, Rho1Stats]:
    """policy_losses `[B, S, H]`, ref_losses `[B, S]` (target-indexed), labels `[B, S]` →
    (weights `[B, S, H]` in policy_losses' dtype, detached, 0 where invalid; Rho1Stats)."""
    if mode not in RHO1_MODES:
        raise ValueError(f"rho1 mode must be one of {list(RHO1_MODES)}, got {mode!r}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"rho1 ratio must be in (0, 1], got {ratio}")
    e, valid = excess_loss(policy_losses, ref_losses, labels, attention_mask)
    H = e.shape[-1]
    if mode == "topk":
        w, kept = _topk(e, valid, ratio, keep_first_head, gather_fn)
    else:
        if temperature <= 0 or not 0.0 <= clip_min <= clip_max:
            raise ValueError(f"need temperature > 0 and 0 <= clip_min <= clip_max, got T={temperature}, "
                             f"clip_min={clip_min}, clip_max={clip_max}")
        w = torch.zeros_like(e)
        kept = torch.zeros(H, dtype=torch.float64, device=e.device)
        for k in range(H):
            raw = torch.exp(zscore(e[..., k], valid[..., k], reduce_fn=reduce_fn) / temperature)
            w[..., k] = torch.where(valid[..., k], raw.clamp(clip_min, clip_max), torch.zeros_like(raw))
            inside = valid[..., k] & (raw >= clip_min) & (raw <= clip_max)
            kept[k] = inside.sum().double() / valid[..., k].sum().clamp_min(1)
    counts = valid.sum((0, 1)).double().clamp_min(1)
    stats = Rho1Stats(kept_fraction=kept, mean_weight=(w * valid).sum((0, 1)) / counts,
                      mean_excess=(e * valid).sum((0, 1)) / counts)
    return w.to(policy_losses.dtype), stats

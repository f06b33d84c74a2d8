"""What a researcher reads off a batch of token weights: how many tokens carry the loss, whether
the weights follow position, and whether they single out the tokens that decide correctness.

All take target-indexed `[B, S]` tensors and a same-shaped bool `mask` of valid targets (the
response tokens that carry loss); rows are solutions. Each measure's good direction and null are
in docs/MATH.md ("Weight diagnostics"):

    effective_sample_size(w, mask)        (Σw)² / (N·Σw²) ∈ (0, 1]; 1 = uniform weights
    relative_position(mask)               (k + ½) / n for the k-th of a row's n valid targets
    position_spearman(w, mask)            Spearman(weight, relative position) over all valid targets
    quarter_means(w, mask)                mean weight in each quarter of the response  [4]
    within_solution_auc(s, pos, mask)     mean over rows of the AUC of s for pos vs other tokens
                                          of the same row; exactly 0.5 in expectation when s is
                                          permuted within each row

    pooled_diagnostics(w, rel, valid)     the first four as 0-dim tensors for a training step's log,
                                          from 1-D values that ranks gather and pool

Pure torch, float64. The step-time measures make no host sync (the loop syncs all stats once per
log); the AUCs, used offline, return floats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def average_ranks(x: Tensor, valid: Tensor | None = None) -> Tensor:
    """1-based ranks of a 1-D tensor among its `valid` entries (default all), ties sharing their
    average rank (float64; invalid entries get ranks above every valid one, to be ignored). No
    host sync and no data-dependent shape: a value's ties span [searchsorted left, right)."""
    x = x.double().flatten()
    if valid is not None:
        x = torch.where(valid.flatten().bool(), x, torch.full_like(x, math.inf))
    ordered = torch.sort(x).values
    left = torch.searchsorted(ordered, x, right=False)
    right = torch.searchsorted(ordered, x, right=True)
    return (left + right + 1).double() / 2


def rank_auc(scores: Tensor, labels: Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann–Whitney U / n₊n₋);
    NaN when either class is empty."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def effective_sample_size(w: Tensor, mask: Tensor) -> Tensor:
    """Kish's effective sample size as a fraction of the valid targets: (Σw)² / (N·Σw²), a 0-dim
    float64 tensor. 1 = every target counts equally; 1/N = one target carries all the loss; NaN
    if there is no valid target (or all weights are 0)."""
    m = mask.bool()
    wd = torch.where(m, w.detach().double(), torch.zeros((), dtype=torch.float64, device=w.device))
    n, sq = m.sum().double(), (wd * wd).sum()
    return wd.sum() ** 2 / (n * sq)  # 0/0 = NaN when empty


def relative_position(mask: Tensor) -> Tensor:
    """`[B, S]` float64: (k + ½) / n at the k-th (0-based) of a row's n valid targets, 0 elsewhere;
    the middle of the k-th of n equal slices of the response, so quarters split evenly."""
    m = mask.bool()
    k = torch.cumsum(m.long(), dim=1) - 1
    n = m.sum(dim=1, keepdim=True).clamp_min(1)
    return torch.where(m, (k.double() + 0.5) / n.double(), torch.zeros((), dtype=torch.float64))


def spearman(x: Tensor, y: Tensor, valid: Tensor | None = None) -> Tensor:
    """Spearman's rank correlation of two 1-D tensors over their `valid` entries (default all):
    the Pearson correlation of average ranks, a 0-dim float64 tensor; NaN when either is constant
    or has fewer than 2 entries."""
    v = torch.ones_like(x, dtype=torch.bool) if valid is None else valid.flatten().bool()
    vd = v.double()
    n = vd.sum()
    rx, ry = average_ranks(x, v), average_ranks(y, v)
    rx = torch.where(v, rx - (rx * vd).sum() / n, torch.zeros_like(rx))
    ry = torch.where(v, ry - (ry * vd).sum() / n, torch.zeros_like(ry))
    return (rx * ry).sum() / ((rx * rx).sum().sqrt() * (ry * ry).sum().sqrt())  # 0/0 = NaN


def quarter_of(rel: Tensor) -> Tensor:
    """Quarter (0..3) of the response that a relative position falls in."""
    return (rel * 4).floor().clamp(0, 3).long()


def quarter_means(w: Tensor, mask: Tensor) -> Tensor:
    """`[4]` mean weight over the valid targets in each quarter of their response (by relative
    position); NaN for an empty quarter."""
    m = mask.bool()
    return _quarter_means(w.flatten(), relative_position(m).flatten(), m.flatten())


def _quarter_means(w: Tensor, rel: Tensor, valid: Tensor) -> Tensor:
    onehot = torch.nn.functional.one_hot(quarter_of(rel), 4).double() * valid.double()[:, None]  # [N, 4]
    return (w.detach().double()[:, None] * onehot).sum(0) / onehot.sum(0)


def position_spearman(w: Tensor, mask: Tensor) -> Tensor:
    """Spearman(weight, relative position) over all valid targets: +1 = weights grow towards the
    end of every response, 0 = no monotone relation to position."""
    m = mask.bool()
    return spearman(w.detach().double().flatten(), relative_position(m).flatten(), m.flatten())


def within_solution_auc(scores: Tensor, positive: Tensor, mask: Tensor) -> tuple[float, int]:
    """Mean over rows of the AUC of `scores` separating a row's `positive` valid targets from its
    other valid targets, and the number of rows that had both kinds (rows without are skipped).
    Comparing tokens only within a solution removes what differs between solutions (length,
    difficulty, the outcome itself), so permuting scores within each row gives exactly 0.5."""
    m, p = mask.bool(), positive.bool() & mask.bool()
    aucs = []
    for b in range(scores.shape[0]):
        row = m[b]
        a = rank_auc(scores[b][row], p[b][row])
        if not math.isnan(a):
            aucs.append(a)
    return (sum(aucs) / len(aucs) if aucs else float("nan")), len(aucs)


def pooled_diagnostics(w: Tensor, rel: Tensor, valid: Tensor, prefix: str = "weights/") -> dict[str, Tensor]:
    """ESS fraction, Spearman with relative position and the four quarter means, as 0-dim float64
    tensors (no host sync, static shapes), from 1-D `w`, `rel` (`relative_position`) and `valid`
    of the same targets, so ranks can gather their triples and pool them."""
    w, rel, valid = w.detach().double().flatten(), rel.double().flatten(), valid.flatten().bool()
    q = _quarter_means(w, rel, valid)
    return {f"{prefix}ess": effective_sample_size(w, valid), f"{prefix}position_spearman": spearman(w, rel, valid),
            **{f"{prefix}quarter_{i + 1}": q[i] for i in range(4)}}


def weight_diagnostics(w: Tensor, mask: Tensor, prefix: str = "weights/") -> dict[str, Tensor]:
    """w, mask `[B, S]` (target-indexed) → `pooled_diagnostics` of the valid targets."""
    m = mask.bool()
    return pooled_diagnostics(w.flatten(), relative_position(m).flatten(), m.flatten(), prefix)

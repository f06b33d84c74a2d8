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

Pure torch, float64, no host syncs beyond the returned floats' `.item()` in the callers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor


def average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, ties sharing their average rank (float64)."""
    x = x.double().flatten()
    order = torch.argsort(x, stable=True)
    _, inverse, counts = torch.unique_consecutive(x[order], return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    ranks = torch.empty_like(x)
    ranks[order] = (ends - (counts.double() - 1) / 2)[inverse]
    return ranks


def rank_auc(scores: Tensor, labels: Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann–Whitney U / n₊n₋);
    NaN when either class is empty."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def effective_sample_size(w: Tensor, mask: Tensor) -> float:
    """Kish's effective sample size as a fraction of the valid targets: (Σw)² / (N·Σw²).
    1 = every target counts equally; 1/N = one target carries all the loss. NaN if empty."""
    m = mask.bool()
    wd = w.detach().double()[m]
    n, sq = wd.numel(), float((wd * wd).sum())
    if n == 0 or sq <= 0:
        return float("nan")
    return float(wd.sum()) ** 2 / (n * sq)


def relative_position(mask: Tensor) -> Tensor:
    """`[B, S]` float64: (k + ½) / n at the k-th (0-based) of a row's n valid targets, 0 elsewhere;
    the middle of the k-th of n equal slices of the response, so quarters split evenly."""
    m = mask.bool()
    k = torch.cumsum(m.long(), dim=1) - 1
    n = m.sum(dim=1, keepdim=True).clamp_min(1)
    return torch.where(m, (k.double() + 0.5) / n.double(), torch.zeros((), dtype=torch.float64))


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (Pearson of average ranks); NaN when either
    is constant or has fewer than 2 entries."""
    if x.numel() < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float((rx * rx).sum().sqrt() * (ry * ry).sum().sqrt())
    return float((rx * ry).sum()) / den if den > 0 else float("nan")


def position_spearman(w: Tensor, mask: Tensor) -> float:
    """Spearman(weight, relative position) over all valid targets: +1 = weights grow towards the
    end of every response, 0 = no monotone relation to position."""
    m = mask.bool()
    return spearman(w.detach().double()[m], relative_position(m)[m])


def quarter_means(w: Tensor, mask: Tensor) -> list[float]:
    """Mean weight over the valid targets in each quarter of their response (by relative
    position); NaN for an empty quarter."""
    m = mask.bool()
    q = (relative_position(m) * 4).floor().clamp(0, 3).long()
    wd = w.detach().double()
    out = []
    for i in range(4):
        sel = m & (q == i)
        out.append(float(wd[sel].mean()) if bool(sel.any()) else float("nan"))
    return out


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


@dataclass
class WeightDiagnostics:
    """One batch's (or one validation pass's) diagnostics of token weights; see the module doc."""

    ess: float
    position_spearman: float
    quarter_1: float
    quarter_2: float
    quarter_3: float
    quarter_4: float

    def to_dict(self, prefix: str = "weights/") -> dict[str, float]:
        return {f"{prefix}{f.name}": float(getattr(self, f.name)) for f in fields(self)}


def pooled_diagnostics(w: Tensor, rel: Tensor) -> WeightDiagnostics:
    """The diagnostics from pooled 1-D `w [N]` and their relative positions `rel [N]` (what
    `relative_position` gave at those targets), so ranks can gather pairs and pool them."""
    w, rel = w.detach().double().flatten(), rel.double().flatten()
    quarter = (rel * 4).floor().clamp(0, 3).long()
    q = [float(w[quarter == i].mean()) if bool((quarter == i).any()) else float("nan") for i in range(4)]
    ones = torch.ones_like(w, dtype=torch.bool)
    return WeightDiagnostics(effective_sample_size(w, ones), spearman(w, rel), *q)


def weight_diagnostics(w: Tensor, mask: Tensor) -> WeightDiagnostics:
    """w, mask `[B, S]` (target-indexed) → ESS fraction, Spearman with position, quarter means."""
    m = mask.bool()
    return pooled_diagnostics(w.detach().double()[m], relative_position(m)[m])

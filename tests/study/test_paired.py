"""Paired comparisons against slow references: exact sign-flip p by enumeration, the t interval
by formula, the bootstrap's coverage of a known difference, and the minimum detectable
difference shrinking with more tasks."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from wmtp.study.paired import (
    compare,
    hierarchical_bootstrap,
    paired_differences,
    sign_flip_p,
    t_interval,
)


def _arm(seeds, tasks, p, rng, shift=0.0):
    return {s: {f"t{t}": float(rng.random() < p[t] + shift) for t in range(tasks)} for s in range(seeds)}


def test_paired_differences_match_tasks_and_seeds():
    a = {0: {"x": 1.0, "y": 0.0, "z": 1.0}, 1: {"x": 0.0}, 2: {"x": 1.0}}
    b = {0: {"x": 0.0, "y": 0.0}, 1: {"x": 1.0}}
    assert paired_differences(a, b) == {0: [1.0, 0.0], 1: [-1.0]}


def test_sign_flip_p_by_enumeration():
    d = [0.3, -0.1, 0.2, 0.05]
    obs = abs(sum(d) / 4)
    hits = sum(abs(sum(s * x for s, x in zip(signs, d)) / 4) >= obs - 1e-12
               for signs in itertools.product((1, -1), repeat=4))
    assert sign_flip_p(d) == hits / 16
    assert sign_flip_p([0.1, 0.2, 0.3]) == pytest.approx(2 / 8)  # the floor at 3 seeds
    assert sign_flip_p([]) == 1.0


def test_t_interval_by_formula():
    d = [0.1, 0.3, 0.2]
    mean, sd = 0.2, 0.1
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2)
    assert t_interval(d) == pytest.approx((mean - half, mean + half))
    assert all(math.isnan(x) for x in t_interval([0.1]))


def test_bootstrap_resamples_seeds_then_tasks():
    # one seed: only task resampling; its spread is the tasks' standard error
    rows = [[0.0, 1.0] * 50]
    boot = hierarchical_bootstrap(rows, 4000, seed=1)
    assert boot.mean() == pytest.approx(0.5, abs=0.01)
    assert boot.std() == pytest.approx(0.5 / math.sqrt(100), rel=0.1)
    # constant within seeds: only seed resampling moves the mean
    boot = hierarchical_bootstrap([[0.0] * 10, [1.0] * 10], 2000, seed=2)
    assert set(np.unique(boot)) <= {0.0, 0.5, 1.0}


def test_compare_finds_a_real_difference_and_not_a_null_one():
    rng = random.Random(0)
    p = [rng.uniform(0.2, 0.8) for _ in range(200)]
    base = _arm(5, 200, p, rng)
    better = _arm(5, 200, p, rng, shift=0.15)
    same = _arm(5, 200, p, rng)
    real = compare(better, base)
    assert real.n_seeds == 5 and real.n_tasks == 200
    assert real.ci_low > 0 and real.p_sign_flip == pytest.approx(2 / 32)
    assert real.mdd < 0.15
    null = compare(same, base)
    assert null.ci_low < 0 < null.ci_high


def test_mdd_shrinks_with_more_tasks():
    rng = random.Random(1)
    p = [0.5] * 400
    small = compare(_arm(3, 50, p, rng), _arm(3, 50, p, rng))
    large = compare(_arm(3, 400, p, rng), _arm(3, 400, p, rng))
    assert large.mdd < small.mdd

"""Weight diagnostics against slow, obvious references (loops over Python floats)."""

import itertools
import math
import random

import pytest
import torch

from wmtp.weighting.diagnostics import (
    average_ranks,
    effective_sample_size,
    position_spearman,
    quarter_means,
    rank_auc,
    relative_position,
    spearman,
    weight_diagnostics,
    within_solution_auc,
)


def _rows(seed=0, B=5, S=12):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(B, S, generator=g, dtype=torch.float64) * 3
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b in range(B):
        start = b % 3
        mask[b, start:start + 4 + 2 * b] = True
    return w, mask


def _pairwise_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _slow_ranks(xs):
    ranks = []
    for x in xs:
        below = sum(1 for y in xs if y < x)
        ties = sum(1 for y in xs if y == x)
        ranks.append(below + (ties + 1) / 2)
    return ranks


def _slow_pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_rank_auc_matches_pairwise_counting_with_ties():
    rng = random.Random(1)
    scores = [rng.choice([0.0, 0.5, 1.0, 2.0]) for _ in range(30)]
    labels = [rng.random() < 0.4 for _ in range(30)]
    assert rank_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(_pairwise_auc(scores, labels), abs=1e-12)


def test_ess_is_kish_formula_and_one_for_uniform():
    w, mask = _rows()
    vals = [float(v) for v in w[mask]]
    expected = sum(vals) ** 2 / (len(vals) * sum(v * v for v in vals))
    assert float(effective_sample_size(w, mask)) == pytest.approx(expected, rel=1e-12)
    assert float(effective_sample_size(torch.ones_like(w), mask)) == pytest.approx(1.0)
    one_hot = torch.zeros_like(w)
    one_hot[0, 0] = 1.0
    assert float(effective_sample_size(one_hot, mask)) == pytest.approx(1 / int(mask.sum()))


def test_relative_position_by_hand():
    mask = torch.tensor([[False, True, True, True, True, False], [True, True, False, False, False, False]])
    rel = relative_position(mask)
    assert rel[0].tolist() == pytest.approx([0, 0.125, 0.375, 0.625, 0.875, 0])
    assert rel[1].tolist() == pytest.approx([0.25, 0.75, 0, 0, 0, 0])


def test_spearman_matches_pearson_of_slow_ranks():
    rng = random.Random(3)
    a = [rng.choice(range(6)) for _ in range(25)]
    b = [rng.random() for _ in range(25)]
    expected = _slow_pearson(_slow_ranks(a), _slow_ranks(b))
    assert float(spearman(torch.tensor(a, dtype=torch.float64), torch.tensor(b))) == pytest.approx(expected, abs=1e-12)


def test_position_spearman_and_quarters_of_a_ramp():
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, 1:9] = True
    ramp = relative_position(mask) * 2  # grows towards EOS in every row
    assert float(position_spearman(ramp, mask)) == pytest.approx(1.0)
    assert float(position_spearman(-ramp, mask)) == pytest.approx(-1.0)
    q = quarter_means(ramp, mask).tolist()
    # 8 targets per row: quarter i holds k = 2i, 2i+1 → rel (4i+1)/16, (4i+3)/16; weight 2·rel
    assert q == pytest.approx([(4 * i + 2) / 8 for i in range(4)])


def test_quarter_means_by_loop():
    w, mask = _rows(seed=4)
    sums, counts = [0.0] * 4, [0] * 4
    for b in range(w.shape[0]):
        idx = [s for s in range(w.shape[1]) if mask[b, s]]
        for k, s in enumerate(idx):
            q = min(3, int((k + 0.5) / len(idx) * 4))
            sums[q] += float(w[b, s])
            counts[q] += 1
    assert quarter_means(w, mask).tolist() == pytest.approx([s / c for s, c in zip(sums, counts)], rel=1e-12)


def test_within_solution_auc_is_the_mean_of_per_row_pairwise_aucs():
    w, mask = _rows(seed=5)
    pos = torch.zeros_like(mask)
    pos[:, 2::3] = True
    per_row = []
    for b in range(w.shape[0]):
        s = [float(w[b, i]) for i in range(w.shape[1]) if mask[b, i]]
        y = [bool(pos[b, i]) for i in range(w.shape[1]) if mask[b, i]]
        if any(y) and not all(y):
            per_row.append(_pairwise_auc(s, y))
    auc, n = within_solution_auc(w, pos, mask)
    assert n == len(per_row)
    assert auc == pytest.approx(sum(per_row) / len(per_row), abs=1e-12)


def test_within_solution_auc_has_an_exact_null_of_one_half_under_permutation():
    # Every permutation of the scores within each row, ties included: the mean AUC is exactly 0.5.
    rows = [[0.3, 0.3, 1.0, 2.0, 0.1], [5.0, 1.0, 1.0, 4.0]]
    labels = [[True, False, False, True, False], [False, True, False, False]]
    total, count = 0.0, 0
    for p0 in itertools.permutations(rows[0]):
        for p1 in itertools.permutations(rows[1]):
            s = torch.zeros(2, 5, dtype=torch.float64)
            s[0, :5], s[1, :4] = torch.tensor(p0), torch.tensor(p1)
            pos = torch.zeros(2, 5, dtype=torch.bool)
            pos[0, :5], pos[1, :4] = torch.tensor(labels[0]), torch.tensor(labels[1])
            mask = torch.zeros(2, 5, dtype=torch.bool)
            mask[0, :5], mask[1, :4] = True, True
            total += within_solution_auc(s, pos, mask)[0]
            count += 1
    assert total / count == pytest.approx(0.5, abs=1e-12)


def test_pooled_auc_is_not_null_where_within_solution_auc_is():
    # Rows differ in level (e.g. correct vs incorrect solutions); positives sit in the high row.
    s = torch.tensor([[1.0, 1.1, 0.9, 1.0], [0.1, 0.2, 0.0, 0.1]])
    pos = torch.tensor([[True, False, False, True], [True, False, False, False]])
    mask = torch.ones_like(pos)
    # Within each row the positive tokens sit exactly at their row's median: AUC 0.5 per row.
    assert within_solution_auc(s, pos, mask)[0] == pytest.approx(0.5)
    # Pooled over rows the level difference alone moves it away from 0.5.
    assert rank_auc(s[mask], pos[mask]) != pytest.approx(0.5)


def test_average_ranks_share_ties():
    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    assert average_ranks(x).tolist() == _slow_ranks(x.tolist())


def test_empty_and_constant_inputs_are_nan_not_errors():
    w = torch.ones(2, 4, dtype=torch.float64)
    none = torch.zeros(2, 4, dtype=torch.bool)
    assert math.isnan(float(effective_sample_size(w, none)))
    assert math.isnan(float(position_spearman(w, torch.ones_like(none))))  # constant weights
    assert torch.isnan(quarter_means(w, none)).all()


def test_weight_diagnostics_equal_the_single_measures():
    w, mask = _rows(seed=7)
    d = {k: float(v) for k, v in weight_diagnostics(w, mask, "train/weights/").items()}
    assert d["train/weights/ess"] == pytest.approx(float(effective_sample_size(w, mask)))
    assert d["train/weights/position_spearman"] == pytest.approx(float(position_spearman(w, mask)))
    assert [d[f"train/weights/quarter_{i}"] for i in range(1, 5)] == pytest.approx(quarter_means(w, mask).tolist())


def test_masked_ranks_equal_the_ranks_of_the_valid_subset():
    w, mask = _rows(seed=9)
    w = (w * 2).round() / 2  # ties
    sub = w[mask]
    assert average_ranks(w.flatten(), mask.flatten())[mask.flatten()].tolist() == _slow_ranks(sub.tolist())

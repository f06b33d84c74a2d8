"""Shuffled-weights control (`wmtp/weighting/shuffle.py`) against an obvious per-row loop."""

from __future__ import annotations

import pytest
import torch

from wmtp.weighting.shuffle import shuffle_within_rows, step_generator


def test_hand_case_permutes_only_valid_positions():
    w = torch.tensor([[9.0, 1.0, 2.0, 3.0, 7.0], [8.0, 8.0, 4.0, 5.0, 0.0]])
    m = torch.tensor([[False, True, True, True, False], [False, False, True, True, False]])
    out = shuffle_within_rows(w, m, step_generator(0, 0, 1))
    assert out[0, 0] == 9 and out[0, 4] == 7 and out[1, 0] == 8 and out[1, 4] == 0
    assert sorted(out[0, 1:4].tolist()) == [1.0, 2.0, 3.0]
    assert sorted(out[1, 2:4].tolist()) == [4.0, 5.0]


@pytest.mark.parametrize("seed", range(5))
def test_each_row_keeps_its_multiset_and_moves_values(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(6, 40, generator=g, dtype=torch.float64)
    m = torch.rand(6, 40, generator=g) > 0.3
    out = shuffle_within_rows(w, m, step_generator(seed, 0, 3))
    for b in range(6):
        assert torch.equal(out[b][~m[b]], w[b][~m[b]])
        assert torch.equal(out[b][m[b]].sort().values, w[b][m[b]].sort().values)
        assert (out[b][m[b]].mean() - w[b][m[b]].mean()).abs() < 1e-12  # mean-1 renormalisation kept
    assert not torch.equal(out, w)  # 40 positions: the identity permutation is (practically) impossible


def test_heads_are_shuffled_separately_and_deterministically():
    g = torch.Generator().manual_seed(1)
    w = torch.rand(3, 20, 4, generator=g)
    m = torch.rand(3, 20, 4, generator=g) > 0.2
    a = shuffle_within_rows(w, m, step_generator(7, 1, 5))
    b = shuffle_within_rows(w, m, step_generator(7, 1, 5))
    assert torch.equal(a, b)
    assert not torch.equal(a, shuffle_within_rows(w, m, step_generator(7, 1, 6)))
    for i in range(3):
        for k in range(4):
            v = m[i, :, k]
            assert torch.equal(a[i, :, k][v].sort().values, w[i, :, k][v].sort().values)


def test_uniform_shuffle_distribution():
    """Every valid value reaches every valid slot about equally often (a permutation, not a roll)."""
    w = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    m = torch.tensor([[True, True, True, False]])
    counts = torch.zeros(3, 3)
    for s in range(600):
        out = shuffle_within_rows(w, m, step_generator(s, 0, 0))
        for slot in range(3):
            counts[slot, int(out[0, slot]) - 1] += 1
    assert (counts - 200).abs().max() < 60


def test_shape_errors_are_named():
    with pytest.raises(ValueError, match="weights and mask"):
        shuffle_within_rows(torch.ones(2, 3), torch.ones(2, 4, dtype=torch.bool))

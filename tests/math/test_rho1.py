"""Rho-1 excess-loss weights."""

from __future__ import annotations

import pytest
import torch

from wmtp.losses.alignment import IGNORE_INDEX, valid_mask
from wmtp.weighting.rho1 import excess_loss, rho1_weights

I = IGNORE_INDEX  # noqa: E741


def hand_case():
    # prompt p0, response a b c d (positions 1..4); 2 heads.
    labels = torch.tensor([[I, 5, 6, 7, 8]])
    ref = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])  # ℓ^ref(j) at target positions
    # head 1 at t predicts t+1: policy losses 3, 1, 2, 1.5 at t = 0..3 → e = 2, 0, 1, 0.5
    # head 2 at t predicts t+2: policy losses 1, 4, 2 at t = 0..2 → e = 0, 3, 1
    pol = torch.zeros(1, 5, 2)
    pol[0, :4, 0] = torch.tensor([3.0, 1.0, 2.0, 1.5])
    pol[0, :3, 1] = torch.tensor([1.0, 4.0, 2.0])
    return labels, ref, pol


def test_excess_loss_alignment():
    labels, ref, pol = hand_case()
    e, valid = excess_loss(pol, ref, labels)
    assert e[0, :, 0].tolist() == [2.0, 0.0, 1.0, 0.5, 0.0]
    assert e[0, :, 1].tolist() == [0.0, 3.0, 1.0, 0.0, 0.0]
    assert torch.equal(valid, valid_mask(labels, 2))


def test_topk_hand_numbers():
    labels, ref, pol = hand_case()
    w, stats = rho1_weights(pol, ref, labels, mode="topk", ratio=0.5)
    # head 1: 4 valid, keep ceil(2) = top {2, 1} at t = 0, 2, weight N/kept = 2
    assert w[0, :, 0].tolist() == [2.0, 0.0, 2.0, 0.0, 0.0]
    # head 2: 3 valid, keep ceil(1.5) = 2: e = 3 (t=1), 1 (t=2)
    assert w[0, :, 1].tolist() == pytest.approx([0.0, 1.5, 1.5, 0.0, 0.0])
    assert stats.mean_weight.tolist() == pytest.approx([1.0, 1.0])
    assert stats.kept_fraction.tolist() == pytest.approx([0.5, 2 / 3])
    w2, _ = rho1_weights(pol, ref, labels, mode="topk", ratio=0.5, keep_first_head=True)
    assert w2[0, :, 0].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_topk_global_selection_via_gather_equals_whole_batch():
    torch.manual_seed(0)
    B, S, H = 6, 12, 3
    labels = torch.randint(0, 50, (B, S))
    labels[:, :3] = I
    pol = torch.rand(B, S, H) * 5
    ref = torch.rand(B, S) * 5
    full, _ = rho1_weights(pol, ref, labels, ratio=0.3)
    halves = (slice(0, 3), slice(3, 6))
    e_all, v_all = excess_loss(pol, ref, labels)
    parts = []
    for sl in halves:
        other = halves[1] if sl == halves[0] else halves[0]
        calls = iter(range(H))

        def gather_fn(local, other=other, calls=calls):  # stands in for all_gather across 2 ranks
            k = next(calls)
            return torch.cat([local, e_all[other][..., k][v_all[other][..., k]]])

        parts.append(rho1_weights(pol[sl], ref[sl], labels[sl], ratio=0.3, gather_fn=gather_fn)[0])
    assert torch.allclose(torch.cat(parts), full)


def test_continuous_bounds_and_detached():
    torch.manual_seed(1)
    labels = torch.randint(0, 50, (4, 10))
    labels[:, :2] = I
    pol = (torch.rand(4, 10, 2) * 3).requires_grad_(True)
    ref = torch.rand(4, 10)
    w, stats = rho1_weights(pol, ref, labels, mode="continuous", temperature=0.5, clip_min=0.2, clip_max=3.0)
    valid = valid_mask(labels, 2)
    assert not w.requires_grad
    assert (w[valid] >= 0.2).all() and (w[valid] <= 3.0).all() and (w[~valid] == 0).all()
    assert ((stats.kept_fraction >= 0) & (stats.kept_fraction <= 1)).all()


def test_bad_mode_and_ratio():
    labels, ref, pol = hand_case()
    with pytest.raises(ValueError, match="topk"):
        rho1_weights(pol, ref, labels, mode="soft")
    with pytest.raises(ValueError, match="ratio"):
        rho1_weights(pol, ref, labels, ratio=0.0)

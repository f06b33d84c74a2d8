"""Critic losses: hand-derived numbers, gradients, registry."""

from __future__ import annotations

import math

import pytest
import torch

from wmtp.losses.alignment import state_values
from wmtp.losses.value import (
    VALUE_LOSSES,
    clipped_value_loss,
    explained_variance,
    get_value_loss,
    lambda_return_loss,
    masked_mean,
    mc_mse_loss,
    pairwise_loss,
    register_value_loss,
)
from wmtp.weighting.gae import lambda_returns


def test_clipped_value_loss_hand_numbers():
    v_new = torch.tensor([[0.5, 0.25, 9.0]], requires_grad=True)
    v_old = torch.tensor([[0.2, 0.2, 0.0]])
    G = torch.tensor([[1.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    out = clipped_value_loss(v_new, v_old, G, mask, coef=0.5, clip_range=0.2)
    # entry 0: unclipped (0.5−1)² = 0.25, clipped V = 0.2+0.2 = 0.4 → 0.36; max 0.36
    # entry 1: |0.05| < ε → both 0.5625; mean (0.36 + 0.5625)/2 = 0.46125; × coef 0.5 = 0.230625
    assert out.loss.item() == pytest.approx(0.230625)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    out.loss.backward()
    # entry 0 is on the clipped branch (constant in v_new): zero grad; entry 1: 0.5·2·(0.25−1)/2
    assert torch.allclose(v_new.grad, torch.tensor([[0.0, -0.375, 0.0]]))


def test_clipped_value_loss_explicit_denominator_and_explained_variance():
    v = torch.tensor([[0.0, 1.0]])
    G = torch.tensor([[0.0, 1.0]])
    m = torch.ones(1, 2, dtype=torch.bool)
    assert explained_variance(v, G, m).item() == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 2), G, m).item() == pytest.approx(0.0)
    a = clipped_value_loss(v + 0.1, v, G, m, denominator=8).loss
    # (0.1)² per entry, summed over 2 entries / 8, × 0.5
    assert a.item() == pytest.approx(0.5 * 2 * 0.01 / 8)


def test_mc_mse_and_lambda_return_loss():
    values = torch.tensor([[0.0, 0.5, 0.5, 0.0]], requires_grad=True)
    mask = torch.tensor([[False, True, True, False]])
    assert mc_mse_loss(values, mask, torch.tensor([1.0])).item() == pytest.approx(0.25)
    # λ=1, γ=1: TD(λ) target = R, so lambda_return_loss equals mc_mse on the state values.
    resp = torch.tensor([[False, False, True, True]])
    G = lambda_returns(values, resp, torch.tensor([1.0]), 1.0, 1.0)
    lr = lambda_return_loss(state_values(values), G, resp)
    assert lr.item() == pytest.approx(mc_mse_loss(state_values(values), resp, torch.tensor([1.0])).item())
    lr.backward()
    assert values.grad is not None and not G.requires_grad


def test_pairwise_hand_numbers_and_accuracy():
    pos = torch.tensor([[0.6, 0.8, 9.0], [0.1, 0.1, 0.1]], requires_grad=True)
    mpos = torch.tensor([[True, True, False], [True, True, True]])
    neg = torch.tensor([[0.2, 0.2], [0.5, 0.5]])
    mneg = torch.ones(2, 2, dtype=torch.bool)
    loss, acc = pairwise_loss(pos, mpos, neg, mneg)
    # margins: 0.7 − 0.2 = 0.5, 0.1 − 0.5 = −0.4 → softplus(−0.5) = 0.474077, softplus(0.4) = 0.913015
    assert loss.item() == pytest.approx((math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.4))) / 2, rel=1e-6)
    assert acc.item() == pytest.approx(0.5)
    loss.backward()
    assert pos.grad[0, 2] == 0


def test_gradcheck_value_losses():
    torch.manual_seed(0)
    v = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)
    v_old = torch.rand(2, 5, dtype=torch.float64)
    G = torch.rand(2, 5, dtype=torch.float64)
    m = torch.rand(2, 5) < 0.7
    assert torch.autograd.gradcheck(lambda x: clipped_value_loss(x, v_old, G, m, clip_range=0.5).loss, (v,))
    assert torch.autograd.gradcheck(lambda x: pairwise_loss(x, m, v_old, m)[0], (v,))


def test_masked_mean_denominator():
    x = torch.tensor([1.0, 2.0, 3.0])
    m = torch.tensor([True, True, False])
    assert masked_mean(x, m).item() == 1.5 and masked_mean(x, m, 6).item() == 0.5


def test_value_loss_registry():
    assert set(VALUE_LOSSES) >= {"clipped", "mc_mse", "lambda_return", "pairwise"}
    assert get_value_loss("clipped") is clipped_value_loss
    with pytest.raises(ValueError, match="allowed: \\['clipped', 'lambda_return', 'mc_mse', 'pairwise'\\]"):
        get_value_loss("huber")
    with pytest.raises(ValueError, match="already registered"):
        register_value_loss("mc_mse")(mc_mse_loss)

"""Normalisers and advantage weights: hand numbers and hypothesis properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wmtp.weighting.normalize import (
    EMANormalizer,
    IdentityNormalizer,
    build_normalizer,
    masked_moments,
    zscore,
)
from wmtp.weighting.weights import advantage_weights


def test_zscore_hand_numbers():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[True, True, True, False]])
    # mean 2, population std sqrt(2/3) = 0.8165 → z = ∓1.2247, 0; masked entry → 0
    z = zscore(x, m)
    assert torch.allclose(z, torch.tensor([[-1.224744, 0.0, 1.224744, 0.0]]), atol=1e-5)
    # Global stats passed in: (sum, sumsq, count) of a bigger batch with mean 0 and std 2.
    z2 = zscore(x, m, stats=(0.0, 4.0 * 10, 10))
    assert torch.allclose(z2, torch.tensor([[0.5, 1.0, 1.5, 0.0]]), atol=1e-6)


def test_advantage_weights_hand_numbers():
    adv = torch.tensor([[0.0, math.log(2.0), math.log(10.0), -5.0]])
    m = torch.tensor([[True, True, True, True]])
    # exp → 1, 2, 10, e^-5 ≈ 0.0067 → clip [0.1, 5] → 1, 2, 5, 0.1 (2 of 4 clipped); mean 2.025
    w, stats = advantage_weights(adv, m, 1.0, 0.1, 5.0, renormalize=False, normalizer=IdentityNormalizer())
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, 5.0, 0.1]]))
    assert stats.frac_clipped.item() == pytest.approx(0.5)
    assert stats.mean_before_renorm.item() == pytest.approx(2.025)
    w, stats = advantage_weights(adv, m, 1.0, 0.1, 5.0, renormalize=True, normalizer=IdentityNormalizer())
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, 5.0, 0.1]]) / 2.025)
    assert stats.mean.item() == pytest.approx(1.0)
    # temperature 2 halves the exponent: exp(ln 2 / 2) = sqrt(2)
    w, _ = advantage_weights(adv, m, 2.0, 0.1, 5.0, renormalize=False, normalizer=IdentityNormalizer())
    assert w[0, 1].item() == pytest.approx(math.sqrt(2.0))


def test_entropy_is_one_for_uniform_weights():
    adv = torch.zeros(2, 5)
    m = torch.ones(2, 5, dtype=torch.bool)
    _, stats = advantage_weights(adv, m)
    d = stats.to_dict()
    assert d["weights/entropy"] == pytest.approx(1.0) and d["weights/std"] == pytest.approx(0.0)


@st.composite
def adv_batches(draw):
    B = draw(st.integers(1, 5))
    S = draw(st.integers(2, 40))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(B, S, generator=g, dtype=torch.float64) * draw(st.floats(0.01, 10.0))
    mask = torch.rand(B, S, generator=g) < 0.7
    mask[0, 0] = True
    mask[0, 1] = True
    adv[0, 1] += 1.0  # never constant
    lo = draw(st.floats(0.01, 1.0))
    hi = draw(st.floats(1.0, 10.0))
    T = draw(st.floats(0.1, 5.0))
    return adv, mask, lo, hi, T


@settings(max_examples=40, deadline=None)
@given(adv_batches())
def test_weights_positive_within_bounds_and_renorm_mean_one(case):
    adv, mask, lo, hi, T = case
    w, stats = advantage_weights(adv, mask, T, lo, hi, renormalize=False)
    assert (w[mask] > 0).all() and (w[mask] >= lo - 1e-12).all() and (w[mask] <= hi + 1e-12).all()
    assert (w[~mask] == 0).all()
    w2, stats2 = advantage_weights(adv, mask, T, lo, hi, renormalize=True)
    assert w2[mask].mean().item() == pytest.approx(1.0, rel=1e-9)
    assert (w2[mask] > 0).all()
    assert w2[mask].max() / w2[mask].min() <= hi / lo * (1 + 1e-9)
    assert stats2.mean_before_renorm.item() == pytest.approx(w[mask].mean().item(), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(adv_batches())
def test_zscore_mean_zero_std_one(case):
    adv, mask, *_ = case
    z = zscore(adv, mask)
    assert abs(z[mask].mean().item()) < 1e-6
    assert z[mask].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    assert (z[~mask] == 0).all()


@settings(max_examples=30, deadline=None)
@given(adv_batches(), st.randoms(use_true_random=False))
def test_permuting_batch_permutes_weights_and_padding_changes_nothing(case, rnd):
    adv, mask, lo, hi, T = case
    w, _ = advantage_weights(adv, mask, T, lo, hi)
    perm = list(range(adv.shape[0]))
    rnd.shuffle(perm)
    wp, _ = advantage_weights(adv[perm], mask[perm], T, lo, hi)
    assert torch.allclose(wp, w[perm], atol=1e-12)
    pad_adv = torch.cat([adv, torch.randn(adv.shape[0], 3, dtype=adv.dtype)], 1)
    pad_mask = torch.cat([mask, torch.zeros(adv.shape[0], 3, dtype=torch.bool)], 1)
    wpad, _ = advantage_weights(pad_adv, pad_mask, T, lo, hi)
    assert torch.allclose(wpad[:, :-3], w, atol=1e-12) and (wpad[:, -3:] == 0).all()


def test_weights_carry_no_gradient():
    adv = torch.randn(2, 6, requires_grad=True)
    w, _ = advantage_weights(adv, torch.ones(2, 6, dtype=torch.bool))
    assert not w.requires_grad


def test_ema_warmup_momentum_frozen_and_state_dict():
    ema = EMANormalizer(momentum=0.5, warmup_steps=1)
    m = torch.ones(1, 2, dtype=torch.bool)
    a = torch.tensor([[0.0, 2.0]])  # mean 1, E[x²] 2
    b = torch.tensor([[4.0, 6.0]])  # mean 5, E[x²] 26
    za = ema(a, m)  # step 1 ≤ warmup: batch stats → ±1
    assert ema.steps == 0  # staged, not applied until the step is accepted
    ema.commit()
    assert torch.allclose(za, torch.tensor([[-1.0, 1.0]]))
    assert (ema.mean, ema.sq_mean, ema.steps) == (1.0, 2.0, 1)
    zb = ema(b, m)
    ema.commit()  # step 2: mean = .5·1 + .5·5 = 3, E[x²] = .5·2 + .5·26 = 14, var = 5
    assert ema.mean == pytest.approx(3.0) and ema.sq_mean == pytest.approx(14.0)
    assert torch.allclose(zb, (b - 3.0) / math.sqrt(5.0), atol=1e-6)
    state = ema.state_dict()
    frozen = ema(torch.tensor([[100.0, 200.0]]), m, update=False)  # validation: no state change
    assert ema.state_dict() == state
    assert torch.allclose(frozen, (torch.tensor([[100.0, 200.0]]) - 3.0) / math.sqrt(5.0), atol=1e-5)
    other = EMANormalizer()
    other.load_state_dict(state)
    assert other.state_dict() == state


def test_ema_before_any_update_uses_batch_stats():
    ema = EMANormalizer(momentum=0.9, warmup_steps=0)
    m = torch.ones(1, 2, dtype=torch.bool)
    z = ema(torch.tensor([[0.0, 2.0]]), m, update=False)
    assert torch.allclose(z, torch.tensor([[-1.0, 1.0]])) and ema.steps == 0


def test_reduce_fn_gives_global_statistics():
    x = torch.randn(4, 7, dtype=torch.float64)
    m = torch.rand(4, 7) < 0.8
    m[:, 0] = True
    full = zscore(x, m)
    other = masked_moments(x[2:], m[2:])

    def reduce_fn(local):  # stands in for dist.all_reduce(SUM) across two "ranks"
        return local + other

    assert torch.allclose(zscore(x[:2], m[:2], reduce_fn=reduce_fn), full[:2])


def test_build_normalizer_names():
    assert isinstance(build_normalizer("ema", momentum=0.9, warmup_steps=2), EMANormalizer)
    with pytest.raises(ValueError, match="allowed"):
        build_normalizer("minmax")
    with pytest.raises(ValueError, match="clip_min"):
        advantage_weights(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), clip_min=3.0, clip_max=1.0)

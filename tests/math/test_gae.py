"""GAE / TD(λ): hand-derived numbers, reverse-loop equality for any γ, λ in [0, 1], padding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wmtp.weighting.gae import (
    compute_gae,
    compute_gae_reference,
    discounted_reverse_cumsum,
    lambda_returns,
)


def hand_case():
    # positions: 0 BOS, 1 prompt, 2-3 response (s=2, e=3); V = critic at each position.
    values = torch.tensor([[0.1, 0.2, 0.5, 0.8]], dtype=torch.float64)
    mask = torch.tensor([[False, False, True, True]])
    return values, mask, torch.tensor([1.0], dtype=torch.float64)


def test_hand_derived_outcome():
    values, mask, R = hand_case()
    adv, ret = compute_gae(values, mask, R, gamma=0.9, lam=0.5)
    # j=3=e: δ = R − V_2 = 1 − 0.5 = 0.5, A_3 = 0.5, G_3 = 0.5 + V_2 = 1.0
    # j=2:   δ = γ V_2 − V_1 = 0.45 − 0.2 = 0.25, A_2 = 0.25 + γλ·0.5 = 0.475, G_2 = 0.475 + 0.2 = 0.675
    assert torch.allclose(adv, torch.tensor([[0.0, 0.0, 0.475, 0.5]], dtype=torch.float64))
    assert torch.allclose(ret, torch.tensor([[0.0, 0.0, 0.675, 1.0]], dtype=torch.float64))


def test_hand_derived_reward_none():
    values, mask, R = hand_case()
    adv, _ = compute_gae(values, mask, R, gamma=0.9, lam=0.5, reward_mode="none")
    # j=3: δ = γ V_3 − V_2 = 0.72 − 0.5 = 0.22; j=2: δ = 0.25, A_2 = 0.25 + 0.45·0.22 = 0.349
    assert torch.allclose(adv, torch.tensor([[0.0, 0.0, 0.349, 0.22]], dtype=torch.float64))


def test_lambda_one_gamma_one_is_monte_carlo_and_lambda_zero_is_td0():
    values, mask, R = hand_case()
    # λ=1, γ=1: G_j = R for every response token (Monte-Carlo return), no special case.
    assert torch.allclose(lambda_returns(values, mask, R, 1.0, 1.0), mask.double())
    # λ=0: G_j = r_j + γ V_j [j<e]: G_2 = 0.9·0.5 = 0.45, G_3 = R = 1.
    g = lambda_returns(values, mask, R, 0.9, 0.0)
    assert torch.allclose(g, torch.tensor([[0.0, 0.0, 0.45, 1.0]], dtype=torch.float64))


def test_truncated_response_gets_no_terminal_reward():
    """A hand-built batch: row 0 ended (EOS at e), row 1 was cut at max_seq_len. The cut row's last
    step bootstraps from V_e and gets no reward; the ended row is unchanged."""
    values, mask, _ = hand_case()
    values, mask = values.repeat(2, 1), mask.repeat(2, 1)
    R = torch.tensor([1.0, 1.0], dtype=torch.float64)
    truncated = torch.tensor([False, True])
    adv, ret = compute_gae(values, mask, R, gamma=0.9, lam=0.5, truncated=truncated)
    # row 1, j=3 (cut): δ = γ V_3 − V_2 = 0.72 − 0.5 = 0.22 (no R); j=2: δ = 0.25, A_2 = 0.25 + 0.45·0.22
    assert torch.allclose(adv, torch.tensor([[0.0, 0.0, 0.475, 0.5], [0.0, 0.0, 0.349, 0.22]], dtype=torch.float64))
    assert torch.allclose(ret[1], torch.tensor([0.0, 0.0, 0.549, 0.72], dtype=torch.float64))
    # the reward is really gone: R = 0 and R = 1 give the same cut row
    adv0, _ = compute_gae(values, mask, torch.tensor([1.0, 0.0], dtype=torch.float64), 0.9, 0.5, truncated=truncated)
    assert torch.equal(adv0[1], adv[1])
    ref_adv, ref_ret = compute_gae_reference(values, mask, R, 0.9, 0.5, truncated=truncated)
    assert torch.allclose(adv, ref_adv) and torch.allclose(ret, ref_ret)
    # λ-returns of the critic recipe follow: λ=0, γ=0.9 → G_3 = γ V_3 = 0.72 for the cut row
    g = lambda_returns(values, mask, R, 0.9, 0.0, truncated=truncated)
    assert torch.allclose(g[:, 3], torch.tensor([1.0, 0.72], dtype=torch.float64))


def test_discounted_cumsum_blocks_match_direct():
    x = torch.randn(3, 1000, dtype=torch.float64)
    for d in (0.0, 0.3, 0.97, 1.0):
        ref = torch.zeros_like(x)
        acc = torch.zeros(3, dtype=torch.float64)
        for j in reversed(range(1000)):
            acc = x[:, j] + d * acc
            ref[:, j] = acc
        for block in (7, 64, 2000):
            assert torch.allclose(discounted_reverse_cumsum(x, d, block), ref, atol=1e-9)


@st.composite
def gae_batches(draw):
    B = draw(st.integers(1, 4))
    S = draw(st.integers(2, 150))
    left = draw(st.booleans())
    spans = []
    for _ in range(B):
        s = draw(st.integers(1, S - 1))
        e = draw(st.integers(s, S - 1))
        spans.append((s, e))
    gamma = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)))
    lam = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)))
    seed = draw(st.integers(0, 2**16))
    return B, S, left, spans, gamma, lam, seed


def build(B, S, left, spans, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(B, S, generator=g, dtype=torch.float64)
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b, (s, e) in enumerate(spans):
        if left:  # left padding: the response ends at the last position
            s, e = s + (S - 1 - e), S - 1
        mask[b, s:e + 1] = True
    rewards = torch.randint(0, 2, (B,), generator=g).double()
    return values, mask, rewards


@settings(max_examples=40, deadline=None)
@given(gae_batches(), st.sampled_from(["outcome", "none"]))
def test_vectorised_equals_reverse_loop(case, mode):
    B, S, left, spans, gamma, lam, seed = case
    values, mask, rewards = build(B, S, left, spans, seed)
    adv, ret = compute_gae(values, mask, rewards, gamma, lam, mode)
    adv_ref, ret_ref = compute_gae_reference(values, mask, rewards, gamma, lam, mode)
    assert torch.allclose(adv, adv_ref, atol=1e-10)
    assert torch.allclose(ret, ret_ref, atol=1e-10)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


@settings(max_examples=30, deadline=None)
@given(gae_batches())
def test_padding_changes_nothing(case):
    B, S, _, spans, gamma, lam, seed = case
    values, mask, rewards = build(B, S, False, spans, seed)
    adv, ret = compute_gae(values, mask, rewards, gamma, lam)
    # Extra right padding, then extra left padding: the response entries do not move/change.
    pad = 5
    v_r = torch.cat([values, torch.rand(B, pad, dtype=torch.float64)], 1)
    m_r = torch.cat([mask, torch.zeros(B, pad, dtype=torch.bool)], 1)
    adv_r, ret_r = compute_gae(v_r, m_r, rewards, gamma, lam)
    assert torch.allclose(adv_r[:, :S], adv) and torch.allclose(ret_r[:, :S], ret)
    v_l = torch.cat([torch.rand(B, pad, dtype=torch.float64), values], 1)
    m_l = torch.cat([torch.zeros(B, pad, dtype=torch.bool), mask], 1)
    adv_l, _ = compute_gae(v_l, m_l, rewards, gamma, lam)
    assert torch.allclose(adv_l[:, pad:], adv, atol=1e-12)


def test_float32_long_sequence_within_1e6():
    torch.manual_seed(0)
    values = torch.rand(4, 2048)
    mask = torch.zeros(4, 2048, dtype=torch.bool)
    mask[:, 10:2000] = True
    R = torch.tensor([1.0, 0.0, 1.0, 0.0])
    for gamma, lam in ((0.99, 0.95), (1.0, 1.0), (0.0, 0.0)):
        a, r = compute_gae(values, mask, R, gamma, lam)
        a2, r2 = compute_gae_reference(values, mask, R, gamma, lam)
        assert (a - a2).abs().max() < 1e-6 and (r - r2).abs().max() < 1e-6


def test_values_are_detached_and_bad_input_errors():
    values, mask, R = hand_case()
    values.requires_grad_(True)
    adv, ret = compute_gae(values, mask, R, 0.9, 0.9)
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError, match="reward_mode"):
        compute_gae(values, mask, R, 0.9, 0.9, reward_mode="dense")
    with pytest.raises(ValueError, match="gamma"):
        compute_gae(values, mask, R, 1.5, 0.9)
    with pytest.raises(ValueError, match="contiguous"):
        compute_gae(values, torch.tensor([[False, True, False, True]]), R, 0.9, 0.9)
    with pytest.raises(ValueError, match="state before"):
        compute_gae(values, torch.tensor([[True, True, False, False]]), R, 0.9, 0.9)

"""Chunked weighted MTP CE against the naive materialised `[B, S, H, V]` version."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wmtp.losses.alignment import IGNORE_INDEX, align_target_weights, count_valid_targets, shift_labels
from wmtp.losses.mtp import mtp_cross_entropy, mtp_token_losses


def naive_mtp_ce(hidden, w, labels, weights=None, coefs=None, denominators=None):
    """Obvious reference: all logits at once."""
    H = len(hidden)
    logits = torch.stack([h @ w.t() for h in hidden], dim=2)  # [B, S, H, V]
    targets = shift_labels(labels, H)
    ce = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), ignore_index=IGNORE_INDEX,
                         reduction="none").view(targets.shape)
    valid = targets != IGNORE_INDEX
    if weights is None:
        W = torch.ones_like(ce)
    elif weights.dim() == 2:
        W = align_target_weights(weights, H)
    else:
        W = weights
    N = valid.sum((0, 1)).float() if denominators is None else denominators.float()
    c = torch.full((H,), 1.0 / H) if coefs is None else torch.as_tensor(coefs, dtype=ce.dtype)
    per_head = (W.detach() * ce * valid).sum((0, 1)) / N.clamp_min(1)
    return (c * per_head).sum(), (ce * valid).sum((0, 1)) / N.clamp_min(1)


def make_case(B=3, S=9, D=8, V=17, H=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = [torch.randn(B, S, D, generator=g, dtype=dtype, requires_grad=True) for _ in range(H)]
    w = torch.randn(V, D, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[:, :3] = IGNORE_INDEX  # prompt
    labels[0, -2:] = IGNORE_INDEX  # right padding
    return hidden, w, labels


def test_hand_derived_single_token():
    # V=2, D=1, one head, one valid target (label 1 at position 1), hidden h=1 at position 0.
    # logits = h·w = [0, ln 3] → p(1) = 3/4 → CE = −ln(3/4) = 0.28768...
    w = torch.tensor([[0.0], [math.log(3.0)]])
    hidden = [torch.tensor([[[1.0], [5.0]]])]
    labels = torch.tensor([[IGNORE_INDEX, 1]])
    out = mtp_cross_entropy(hidden, w, labels)
    assert out.loss.item() == pytest.approx(-math.log(0.75), rel=1e-6)
    assert out.valid_counts.tolist() == [1]
    # weight 2 on the target (target-indexed) doubles the weighted CE, not the unweighted one.
    out_w = mtp_cross_entropy(hidden, w, labels, weights=torch.tensor([[0.0, 2.0]]))
    assert out_w.loss.item() == pytest.approx(-2 * math.log(0.75), rel=1e-6)
    assert out_w.ce_per_head.item() == pytest.approx(-math.log(0.75), rel=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("weight_kind", [None, "target", "per_head"])
def test_chunked_equals_naive_loss_and_grads(chunk_size, weight_kind):
    hidden, w, labels = make_case()
    B, S = labels.shape
    g = torch.Generator().manual_seed(1)
    weights = {None: None, "target": torch.rand(B, S, generator=g, dtype=torch.float64) + 0.1,
               "per_head": torch.rand(B, S, 3, generator=g, dtype=torch.float64) + 0.1}[weight_kind]
    coefs = [0.5, 0.3, 0.2]
    ref_loss, ref_ce = naive_mtp_ce(hidden, w, labels, weights, coefs)
    ref_grads = torch.autograd.grad(ref_loss, [*hidden, w])
    out = mtp_cross_entropy(hidden, w, labels, weights=weights, head_coefficients=coefs, chunk_size=chunk_size)
    grads = torch.autograd.grad(out.loss, [*hidden, w])
    assert torch.allclose(out.loss.double(), ref_loss, atol=1e-6)
    assert torch.allclose(out.ce_per_head.double(), ref_ce, atol=1e-6)
    assert torch.allclose((torch.tensor(coefs) * out.weighted_ce_per_head).sum().double(), ref_loss, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_float32_grads_match_naive():
    hidden, w, labels = make_case(dtype=torch.float32, V=300, S=20, B=2)
    ref_loss, _ = naive_mtp_ce(hidden, w, labels)
    ref = torch.autograd.grad(ref_loss, [*hidden, w])
    out = mtp_cross_entropy(hidden, w, labels, chunk_size=7)
    got = torch.autograd.grad(out.loss, [*hidden, w])
    assert torch.allclose(out.loss, ref_loss, atol=1e-5)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-6)


def test_gradcheck_custom_function():
    hidden, w, labels = make_case(B=2, S=5, D=3, V=4, H=2)
    weights = torch.rand(2, 5, dtype=torch.float64) + 0.5

    def f(h1, h2, wo):
        return mtp_cross_entropy([h1, h2], wo, labels, weights=weights, chunk_size=2).loss

    assert torch.autograd.gradcheck(f, (*hidden, w))


def test_weights_carry_no_gradient():
    hidden, w, labels = make_case()
    weights = (torch.rand(*labels.shape, dtype=torch.float64) + 0.5).requires_grad_(True)
    out = mtp_cross_entropy(hidden, w, labels, weights=weights)
    out.loss.backward()
    assert weights.grad is None
    assert not out.ce_per_head.requires_grad and not out.weighted_ce_per_head.requires_grad


def test_global_denominators_split_batch_sums_to_whole():
    # Gradient accumulation: two half-batches with the step's global N_k sum to the full batch loss.
    hidden, w, labels = make_case(B=4)
    full = mtp_cross_entropy(hidden, w, labels).loss
    N = count_valid_targets(labels, 3)
    parts = [mtp_cross_entropy([h[sl] for h in hidden], w, labels[sl], denominators=N).loss
             for sl in (slice(0, 2), slice(2, 4))]
    assert torch.allclose(parts[0] + parts[1], full, atol=1e-10)


def test_ignored_everything_gives_zero_loss_and_zero_grads():
    hidden, w, labels = make_case()
    labels = torch.full_like(labels, IGNORE_INDEX)
    out = mtp_cross_entropy(hidden, w, labels)
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.valid_counts.tolist() == [0, 0, 0]
    assert all(h.grad is None or torch.count_nonzero(h.grad) == 0 for h in hidden)


def test_token_losses_match_naive():
    hidden, w, labels = make_case()
    per = mtp_token_losses(hidden, w, labels, chunk_size=5)
    logits = torch.stack([h @ w.t() for h in hidden], dim=2)
    targets = shift_labels(labels, 3)
    ref = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="none").view(targets.shape)
    assert per.shape == targets.shape and not per.requires_grad
    assert torch.allclose(per.double(), ref.detach(), atol=1e-6)


def test_bad_shapes_are_clear_errors():
    hidden, w, labels = make_case()
    with pytest.raises(ValueError, match="weights must be"):
        mtp_cross_entropy(hidden, w, labels, weights=torch.ones(3))
    with pytest.raises(ValueError, match="head_coefficients"):
        mtp_cross_entropy(hidden, w, labels, head_coefficients=[1.0])
    with pytest.raises(ValueError, match="denominators"):
        mtp_cross_entropy(hidden, w, labels, denominators=torch.ones(2))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_and_batch_permutation_change_nothing(side):
    hidden, w, labels = make_case(B=3, S=9)
    weights = torch.rand(*labels.shape, dtype=torch.float64) + 0.1
    base = mtp_cross_entropy(hidden, w, labels, weights=weights)
    pad = 4
    B, _, D = hidden[0].shape

    def padded(x, fill):
        extra = torch.full((B, pad, *x.shape[2:]), fill, dtype=x.dtype)
        return torch.cat([extra, x], 1) if side == "left" else torch.cat([x, extra], 1)

    p_hidden = [padded(h.detach(), 7.0) for h in hidden]
    p_labels = padded(labels, IGNORE_INDEX)
    attn = padded(torch.ones(B, 9, dtype=torch.bool), False)
    out = mtp_cross_entropy(p_hidden, w, p_labels, weights=padded(weights, 3.0), attention_mask=attn)
    assert torch.allclose(out.loss, base.loss) and torch.equal(out.valid_counts, base.valid_counts)
    perm = [2, 0, 1]
    outp = mtp_cross_entropy([h[perm] for h in hidden], w, labels[perm], weights=weights[perm])
    assert torch.allclose(outp.loss, base.loss) and torch.allclose(outp.ce_per_head, base.ce_per_head)


def test_autocast_bf16_and_mixed_dtypes_run_with_close_gradients():
    hidden, w, labels = make_case(dtype=torch.float32, V=50, S=12)
    ref_loss, _ = naive_mtp_ce(hidden, w, labels)
    ref = torch.autograd.grad(ref_loss, [w])[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mtp_cross_entropy(hidden, w, labels, chunk_size=5)
    got = torch.autograd.grad(out.loss, [w])[0]
    assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-5)
    # bf16 hidden states (FSDP mixed precision) with an fp32 output weight.
    hb = [h.detach().bfloat16().requires_grad_(True) for h in hidden]
    out = mtp_cross_entropy(hb, w, labels, chunk_size=5)
    gh = torch.autograd.grad(out.loss, hb)
    assert gh[0].dtype == torch.bfloat16 and torch.isfinite(out.loss)
    assert torch.allclose(out.loss, ref_loss, atol=0.05)

"""The LLaMA-MTP model against a slow, obviously-correct reference written after Meta's
`llama/model.py` (multi-token-prediction repo): complex RoPE, explicit repeat_kv, explicit
softmax attention with an additive causal mask, trunk = layers[:-1], heads = [layers[-1]] +
extra_heads each fed the trunk output, shared norm and output."""

from __future__ import annotations

import math

import pytest
import torch

from wmtp.model.args import PRESETS, ModelArgs
from wmtp.model.transformer import MTPOutput, Transformer, build_model
from wmtp.model.value import ValueModel, build_value_model, value_args_from_policy

# ---------------------------------------------------------------- the reference (Meta's code, unrolled)


def ref_freqs_cis(head_dim: int, end: int, theta: float) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    t = torch.arange(end, dtype=torch.float32)
    return torch.polar(torch.ones(end, head_dim // 2), torch.outer(t, freqs))  # complex64 [end, hd/2]


def ref_rope(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    # x [B, S, n, hd]: consecutive pairs are (real, imag) of one complex number.
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3).type_as(x)


def ref_repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    B, S, n_kv, hd = x.shape
    return x[:, :, :, None, :].expand(B, S, n_kv, n_rep, hd).reshape(B, S, n_kv * n_rep, hd)


def ref_rmsnorm(x, weight, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def ref_block(sd: dict, prefix: str, args: ModelArgs, x, freqs_cis, mask):
    B, S, D = x.shape
    nh, nkv, hd = args.n_heads, args.kv_heads, args.head_dim
    h = ref_rmsnorm(x, sd[prefix + "attention_norm.weight"], args.norm_eps)
    q = (h @ sd[prefix + "attention.wq.weight"].T).view(B, S, nh, hd)
    k = (h @ sd[prefix + "attention.wk.weight"].T).view(B, S, nkv, hd)
    v = (h @ sd[prefix + "attention.wv.weight"].T).view(B, S, nkv, hd)
    q, k = ref_rope(q, freqs_cis), ref_rope(k, freqs_cis)
    k, v = ref_repeat_kv(k, nh // nkv), ref_repeat_kv(v, nh // nkv)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    scores = q @ k.transpose(2, 3) / math.sqrt(hd) + mask
    attn = torch.softmax(scores.float(), dim=-1).type_as(q) @ v
    x = x + attn.transpose(1, 2).reshape(B, S, -1) @ sd[prefix + "attention.wo.weight"].T
    h = ref_rmsnorm(x, sd[prefix + "ffn_norm.weight"], args.norm_eps)
    ff = (torch.nn.functional.silu(h @ sd[prefix + "feed_forward.w1.weight"].T)
          * (h @ sd[prefix + "feed_forward.w3.weight"].T)) @ sd[prefix + "feed_forward.w2.weight"].T
    return x + ff


def ref_forward(sd: dict, args: ModelArgs, tokens: torch.Tensor, key_padding_mask=None) -> torch.Tensor:
    """Logits `[B, S, H, V]` from a state dict, the way Meta's `Transformer.forward` computes them."""
    B, S = tokens.shape
    freqs_cis = ref_freqs_cis(args.head_dim, S, args.rope_theta)
    mask = torch.triu(torch.full((S, S), float("-inf")), diagonal=1)[None, None].expand(B, 1, S, S)
    if key_padding_mask is not None:
        eye = torch.eye(S, dtype=torch.bool)
        hidden_key = ~key_padding_mask[:, None, None, :] & ~eye
        mask = mask.masked_fill(hidden_key, float("-inf"))
    h = sd["tok_embeddings.weight"][tokens]
    n_trunk = args.n_trunk_layers
    for i in range(n_trunk - 1):
        h = ref_block(sd, f"layers.{i}.", args, h, freqs_cis, mask)
    heads = [f"layers.{n_trunk - 1}."] + [f"extra_heads.{j}." for j in range(args.n_future_tokens - 1)]
    latents = [ref_block(sd, p, args, h, freqs_cis, mask) for p in heads]
    out = ref_rmsnorm(torch.stack(latents, dim=-2), sd["norm.weight"], args.norm_eps)
    return (out @ sd["output.weight"].T).float()


# ---------------------------------------------------------------- tests


def _tokens(args: ModelArgs, B: int = 2, S: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, args.vocab_size, (B, S), generator=g)


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
@pytest.mark.parametrize("n_future", [1, 2, 4])
def test_logits_equal_reference(n_kv_heads, n_future):
    args = PRESETS["tiny"].replace(n_kv_heads=n_kv_heads, n_future_tokens=n_future)
    model = build_model(args, seed=3)
    tokens = _tokens(args)
    out = model(tokens, return_logits=True)
    assert isinstance(out, MTPOutput)
    assert out.logits.shape == (2, 12, n_future, args.vocab_size) and out.logits.dtype == torch.float32
    assert len(out.hidden) == n_future and out.hidden[0].shape == (2, 12, args.dim)
    ref = ref_forward(model.state_dict(), args, tokens)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)


def test_hidden_are_normed_head_outputs(tiny_model, tiny_args):
    tokens = _tokens(tiny_args)
    out = tiny_model(tokens, return_logits=True)
    for k, h in enumerate(out.hidden):
        torch.testing.assert_close(tiny_model.output(h).float(), out.logits[:, :, k])


def test_n_heads_subset_equals_prefix(tiny_model, tiny_args):
    tokens = _tokens(tiny_args)
    full = tiny_model(tokens, return_logits=True).logits
    two = tiny_model(tokens, n_future_heads=2, return_logits=True).logits
    torch.testing.assert_close(two, full[:, :, :2])
    with pytest.raises(ValueError, match="n_future_heads"):
        tiny_model(tokens, n_future_heads=5)


def test_rope_is_relative():
    # The interleaved-pair rotation: <R(m)q, R(n)k> depends on m - n only.
    from wmtp.model.transformer import apply_rope, rope_tables

    cos, sin = rope_tables(8, 32, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def dot(m, n):
        return (apply_rope(q, cos[m:m + 1], sin[m:m + 1]) * apply_rope(k, cos[n:n + 1], sin[n:n + 1])).sum()

    torch.testing.assert_close(dot(5, 2), dot(20, 17))
    fc = ref_freqs_cis(8, 32, 10000.0)
    torch.testing.assert_close(apply_rope(q.expand(1, 32, 1, 8), cos, sin), ref_rope(q.expand(1, 32, 1, 8), fc))


def test_one_head_is_plain_llama():
    """n_future_tokens=1: no extra heads, and the output equals a plain LLaMA stack of all layers."""
    args = PRESETS["tiny"].replace(n_future_tokens=1)
    model = build_model(args, seed=0)
    assert len(model.extra_heads) == 0 and len(model.layers) == args.n_layers
    sd = model.state_dict()
    tokens = _tokens(args)
    S = tokens.shape[1]
    fc = ref_freqs_cis(args.head_dim, S, args.rope_theta)
    mask = torch.triu(torch.full((S, S), float("-inf")), diagonal=1)
    h = sd["tok_embeddings.weight"][tokens]
    for i in range(args.n_layers):
        h = ref_block(sd, f"layers.{i}.", args, h, fc, mask)
    plain = ref_rmsnorm(h, sd["norm.weight"], args.norm_eps) @ sd["output.weight"].T
    torch.testing.assert_close(model(tokens, return_logits=True).logits[:, :, 0], plain, atol=1e-5, rtol=1e-5)


def test_key_padding_mask_matches_reference(tiny_model, tiny_args):
    tokens = _tokens(tiny_args, B=3, S=10)
    kpm = torch.ones(3, 10, dtype=torch.bool)
    kpm[1, :3] = False  # left padding
    kpm[2, :6] = False
    out = tiny_model(tokens, key_padding_mask=kpm, return_logits=True).logits
    ref = ref_forward(tiny_model.state_dict(), tiny_args, tokens, key_padding_mask=kpm)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # A left-padded row's real tokens see exactly what the unpadded sequence would.
    alone = tiny_model(tokens[2:, 6:], return_logits=True).logits
    # Positions differ (RoPE is relative, so logits agree).
    torch.testing.assert_close(out[2:, 6:], alone, atol=1e-5, rtol=1e-5)


def _decode_incrementally(model, tokens, prefill: int, key_padding_mask=None):
    B, S = tokens.shape
    cache = model.allocate_cache(B, S)
    cache.key_padding_mask = key_padding_mask
    chunks = [model(tokens[:, :prefill], cache=cache, return_logits=True).logits]
    for t in range(prefill, S):
        chunks.append(model(tokens[:, t:t + 1], start_pos=t, cache=cache, return_logits=True).logits)
    return torch.cat(chunks, dim=1)


@pytest.mark.parametrize("prefill", [1, 5])
def test_kv_cache_decode_equals_full_forward(tiny_model, tiny_args, prefill):
    tokens = _tokens(tiny_args, B=2, S=11)
    full = tiny_model(tokens, return_logits=True).logits
    inc = _decode_incrementally(tiny_model, tokens, prefill)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)


def test_kv_cache_decode_with_left_padding(tiny_model, tiny_args):
    tokens = _tokens(tiny_args, B=2, S=11)
    kpm = torch.ones(2, 11, dtype=torch.bool)
    kpm[0, :4] = False
    full = tiny_model(tokens, key_padding_mask=kpm, return_logits=True).logits
    inc = _decode_incrementally(tiny_model, tokens, prefill=6, key_padding_mask=kpm)
    torch.testing.assert_close(inc[:, :], full, atol=1e-5, rtol=1e-5)
    # Chunked prefill (start_pos > 0 with S > 1) takes the same path.
    cache = tiny_model.allocate_cache(2, 11)
    cache.key_padding_mask = kpm
    a = tiny_model(tokens[:, :4], cache=cache, return_logits=True).logits
    b = tiny_model(tokens[:, 4:], start_pos=4, cache=cache, return_logits=True).logits
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


def test_max_seq_len_is_enforced(tiny_model, tiny_args):
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny_model(_tokens(tiny_args, B=1, S=tiny_args.max_seq_len + 1))


def test_bf16_cast_keeps_float32_rope(tiny_args):
    model = build_model(tiny_args, seed=0)
    tokens = _tokens(tiny_args)
    ref = model(tokens, return_logits=True).logits
    model.to(torch.bfloat16)
    cos, _ = model._rope(0, 12)
    assert cos.dtype == torch.float32
    out = model(tokens, return_logits=True).logits
    assert (out - ref).abs().max() < 0.1  # bf16 weights, fp32 angles


def test_init_is_deterministic_and_seed_dependent(tiny_args):
    a, b, c = build_model(tiny_args, seed=7), build_model(tiny_args, seed=7), build_model(tiny_args, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layers.0.attention.wq.weight"], sc["layers.0.attention.wq.weight"])
    assert torch.all(sa["norm.weight"] == 1)


def test_meta_device_build_then_materialise(tiny_args):
    meta = build_model(tiny_args, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device="cpu")
    torch.manual_seed(5)
    meta.init_weights()
    real = build_model(tiny_args, seed=5)
    tokens = _tokens(tiny_args)
    torch.testing.assert_close(meta(tokens, return_logits=True).logits, real(tokens, return_logits=True).logits)


def test_key_layout_matches_meta(tiny_args):
    model = Transformer(tiny_args)
    keys = set(model.state_dict())
    assert "layers.0.attention.wq.weight" in keys and "extra_heads.2.feed_forward.w3.weight" in keys
    assert f"layers.{tiny_args.n_trunk_layers}.attention.wq.weight" not in keys
    assert not any("rope" in k for k in keys)  # RoPE tables are not checkpointed
    assert [type(b).__name__ for b in model.head_blocks()] == ["TransformerBlock"] * 4
    assert model.head_blocks()[0] is model.layers[-1]


# ---------------------------------------------------------------- value model


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_value_model_shapes_and_padding(tiny_args, head):
    vargs = value_args_from_policy(tiny_args)
    assert vargs.n_future_tokens == 1 and vargs.n_layers == tiny_args.n_trunk_layers
    vm = build_value_model(vargs, head=head, seed=0)
    assert vm.backbone.output is None
    tokens = _tokens(tiny_args, B=3, S=9)
    v = vm(tokens)
    assert v.shape == (3, 9) and v.dtype == torch.float32
    kpm = torch.ones(3, 9, dtype=torch.bool)
    kpm[0, :2] = False
    vp = vm(tokens, key_padding_mask=kpm)
    torch.testing.assert_close(vp[1:], v[1:])
    torch.testing.assert_close(vp[0, 2:], vm(tokens[:1, 2:])[0], atol=1e-5, rtol=1e-5)


def test_value_model_init_from_policy(tiny_model, tiny_args):
    vm = build_value_model(value_args_from_policy(tiny_args), seed=1)
    vm.init_from_policy(tiny_model)
    tokens = _tokens(tiny_args)
    # The critic backbone's hidden equals the policy's head-1 hidden (same trunk + layers[-1] + norm).
    torch.testing.assert_close(vm.backbone(tokens).hidden[0], tiny_model(tokens, n_future_heads=1).hidden[0])
    with pytest.raises(ValueError, match="layers"):
        ValueModel(tiny_args.replace(n_layers=8, n_future_tokens=1)).init_from_policy(tiny_model)


def test_value_model_rejects_unknown_head(tiny_args):
    with pytest.raises(ValueError, match="allowed"):
        ValueModel(tiny_args, head="conv")

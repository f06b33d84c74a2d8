"""Checkpoint I/O: Meta consolidated shards, safetensors round trips, HF import, clear errors,
and Meta's 7B_1T_4 key layout on the meta device."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from wmtp.checkpoint import (
    CheckpointError,
    load_model,
    load_value_model,
    save_meta_checkpoint,
    save_model,
    save_value_model,
)
from wmtp.checkpoint.formats import hf_unpermute
from wmtp.model.args import PRESETS
from wmtp.model.transformer import build_model
from wmtp.model.value import build_value_model, value_args_from_policy


def _tokens(vocab, B=2, S=10):
    return torch.randint(0, vocab, (B, S), generator=torch.Generator().manual_seed(0))


def _logits(model, tokens):
    return model(tokens, return_logits=True).logits


@pytest.mark.parametrize("n_shards", [1, 2])
def test_meta_format_round_trip(tmp_path, tiny_model, tiny_args, n_shards):
    folder = save_meta_checkpoint(tiny_model, tmp_path / "meta", n_shards=n_shards)
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["consolidated.00.pth", "consolidated.01.pth"][:n_shards] + ["params.json"]
    params = json.loads((folder / "params.json").read_text())
    assert params["n_future_tokens"] == 4 and "max_seq_len" not in params  # Meta's keys only
    if n_shards == 2:
        shard = torch.load(folder / "consolidated.01.pth", weights_only=True)
        D, hd = tiny_args.dim, tiny_args.ffn_hidden_dim
        assert shard["layers.0.attention.wq.weight"].shape == (D // 2, D)  # column parallel
        assert shard["layers.0.attention.wo.weight"].shape == (D, D // 2)  # row parallel
        assert shard["layers.0.feed_forward.w2.weight"].shape == (D, hd // 2)
        assert shard["tok_embeddings.weight"].shape == (tiny_args.vocab_size, D // 2)  # ParallelEmbedding
        assert shard["norm.weight"].shape == (D,)  # replicated
    loaded = load_model(folder)
    tokens = _tokens(tiny_args.vocab_size)
    assert torch.equal(_logits(loaded, tokens), _logits(tiny_model, tokens))
    assert loaded.args == tiny_args.replace(max_seq_len=2048)


def test_meta_vocab_parallel_embedding_and_rope_freqs(tmp_path, tiny_model, tiny_args):
    """LLaMA 3-style shards split the embedding along the vocabulary; LLaMA 1/2 store rope.freqs and
    `vocab_size: -1`. All load."""
    sd = tiny_model.state_dict()
    folder = tmp_path / "m"
    folder.mkdir()
    for r in range(2):
        shard = {}
        for k, v in sd.items():
            if k == "tok_embeddings.weight":
                shard[k] = v.chunk(2, 0)[r].clone()
            else:
                dim = 1 if k.endswith(("wo.weight", "w2.weight")) else None if k.endswith("norm.weight") else 0
                shard[k] = v.clone() if dim is None else v.chunk(2, dim)[r].clone()
        shard["rope.freqs"] = torch.ones(tiny_args.head_dim // 2)
        torch.save(shard, folder / f"consolidated.{r:02d}.pth")
    params = {k: v for k, v in tiny_args.to_params_json().items()} | {"vocab_size": -1, "max_batch_size": 32}
    (folder / "params.json").write_text(json.dumps(params))
    loaded = load_model(folder)
    tokens = _tokens(tiny_args.vocab_size)
    assert torch.equal(_logits(loaded, tokens), _logits(tiny_model, tokens))


def test_safetensors_round_trip_and_dtype(tmp_path, tiny_model, tiny_args):
    folder = save_model(tiny_model, tmp_path / "w")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "params.json"]
    loaded = load_model(folder)
    assert loaded.args == tiny_args
    tokens = _tokens(tiny_args.vocab_size)
    assert torch.equal(_logits(loaded, tokens), _logits(tiny_model, tokens))
    half = load_model(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert half.rope_cos.dtype == torch.float32
    assert (_logits(half, tokens) - _logits(tiny_model, tokens)).abs().max() < 0.1


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_value_model_round_trip(tmp_path, tiny_args, head):
    vm = build_value_model(value_args_from_policy(tiny_args), head=head, seed=2)
    torch.nn.init.normal_(next(vm.value_head.parameters()))
    folder = save_value_model(vm, tmp_path / "v")
    assert json.loads((folder / "value.json").read_text()) == {"head": head}
    loaded = load_value_model(folder)
    assert loaded.value_head.kind == head
    tokens = _tokens(tiny_args.vocab_size)
    assert torch.equal(loaded(tokens), vm(tokens))
    with pytest.raises(CheckpointError, match="load_value_model"):
        load_model(folder)
    with pytest.raises(CheckpointError, match="head"):
        save_value_model(vm, tmp_path / "x", head="mlp" if head == "linear" else "linear")


def test_value_model_bad_head_kind(tmp_path, tiny_args):
    folder = save_value_model(build_value_model(value_args_from_policy(tiny_args)), tmp_path / "v")
    (folder / "value.json").write_text(json.dumps({"head": "conv"}))
    with pytest.raises(CheckpointError, match="conv.*allowed"):
        load_value_model(folder)


# ---------------------------------------------------------------- errors


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nope"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in .*empty"):
        load_model(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="wmtp.storage"):
        load_model("s3://bucket/model")
    with pytest.raises(CheckpointError, match="value.json"):
        load_value_model(tmp_path / "empty")


def test_missing_unknown_and_misshaped_keys(tmp_path, tiny_model, tiny_args):
    folder = save_model(tiny_model, tmp_path / "w")
    sd = {k: v.clone() for k, v in tiny_model.state_dict().items()}

    del sd["extra_heads.1.ffn_norm.weight"]
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing key 'extra_heads.1.ffn_norm.weight'"):
        load_model(folder)

    sd["extra_heads.1.ffn_norm.weight"] = torch.ones(tiny_args.dim)
    sd["extra_heads.3.ffn_norm.weight"] = torch.ones(tiny_args.dim)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unknown key 'extra_heads.3.ffn_norm.weight'"):
        load_model(folder)

    del sd["extra_heads.3.ffn_norm.weight"]
    sd["layers.0.attention.wq.weight"] = torch.zeros(8, tiny_args.dim)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"layers.0.attention.wq.weight: checkpoint shape \(8, 32\) != "
                                              r"model shape \(32, 32\)"):
        load_model(folder)


def test_bad_params_json(tmp_path, tiny_model):
    folder = save_model(tiny_model, tmp_path / "w")
    (folder / "params.json").write_text('{"dim": 32,\n "n_layerz": 4}')
    with pytest.raises(CheckpointError, match="params.json.*n_layerz"):
        load_model(folder)
    (folder / "params.json").write_text('{"dim": 32,\n oops}')
    with pytest.raises(CheckpointError, match=r"params.json:2: invalid JSON"):
        load_model(folder)


def test_meta_shards_disagree(tmp_path, tiny_model):
    folder = save_meta_checkpoint(tiny_model, tmp_path / "m", n_shards=2)
    shard = torch.load(folder / "consolidated.01.pth", weights_only=True)
    del shard["norm.weight"]
    torch.save(shard, folder / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match="consolidated.01.pth: missing key 'norm.weight'"):
        load_model(folder)


# ---------------------------------------------------------------- HF LLaMA import


def hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    # transformers' convert_llama_weights_to_hf.py
    d1, d2 = w.shape
    return w.view(n_heads, d1 // n_heads // 2, 2, d2).transpose(1, 2).reshape(d1, d2)


def hf_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    # transformers' rotate_half convention: x [B, S, n, hd]
    hd, S = x.shape[-1], x.shape[1]
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2).float() / hd))
    emb = torch.cat([torch.outer(torch.arange(S).float(), inv)] * 2, dim=-1)[None, :, None]
    rot = torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], dim=-1)
    return x * emb.cos() + rot * emb.sin()


def test_hf_unpermute_gives_same_attention_scores():
    from wmtp.model.transformer import apply_rope, rope_tables

    n, hd, D, S = 2, 8, 16, 6
    wq, wk, x = torch.randn(n * hd, D), torch.randn(n * hd, D), torch.randn(1, S, D)
    assert torch.equal(hf_unpermute(hf_permute(wq, n), n), wq)
    cos, sin = rope_tables(hd, S, 10000.0)
    q = apply_rope((x @ wq.T).view(1, S, n, hd), cos, sin)
    k = apply_rope((x @ wk.T).view(1, S, n, hd), cos, sin)
    qh = hf_rope((x @ hf_permute(wq, n).T).view(1, S, n, hd), 10000.0)
    kh = hf_rope((x @ hf_permute(wk, n).T).view(1, S, n, hd), 10000.0)
    torch.testing.assert_close(torch.einsum("bsnd,btnd->bnst", q, k), torch.einsum("bsnd,btnd->bnst", qh, kh),
                               atol=1e-4, rtol=1e-4)


def test_hf_llama_import(tmp_path):
    args = PRESETS["tiny"].replace(n_future_tokens=1)
    model = build_model(args, seed=4)
    names = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
             "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
             "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}
    hf = {}
    for k, v in model.state_dict().items():
        if k == "tok_embeddings.weight":
            hf["model.embed_tokens.weight"] = v
        elif k == "norm.weight":
            hf["model.norm.weight"] = v
        elif k == "output.weight":
            hf["lm_head.weight"] = v
        else:
            _, i, rest = k.split(".", 2)
            mod = rest.rsplit(".", 1)[0]
            if mod == "attention.wq":
                v = hf_permute(v, args.n_heads)
            elif mod == "attention.wk":
                v = hf_permute(v, args.kv_heads)
            hf[f"model.layers.{i}.{names[mod]}.weight"] = v
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in hf.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "hidden_size": args.dim, "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads, "vocab_size": args.vocab_size,
        "intermediate_size": args.ffn_hidden_dim, "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta,
        "max_position_embeddings": args.max_seq_len}))
    loaded = load_model(folder)
    tokens = _tokens(args.vocab_size)
    torch.testing.assert_close(_logits(loaded, tokens), _logits(model, tokens), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- Meta's 7B_1T_4 layout


def meta_7b_1t_4_keys() -> set[str]:
    """Meta's model.py with n_layers=32, n_future_tokens=4: `layers` gets range(32 - 4 + 1) = 0..28,
    `extra_heads` gets range(29, 32) → 3 blocks indexed 0..2."""
    block = ["attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wo.weight",
             "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
             "attention_norm.weight", "ffn_norm.weight"]
    keys = {"tok_embeddings.weight", "norm.weight", "output.weight"}
    keys |= {f"layers.{i}.{b}" for i in range(29) for b in block}
    keys |= {f"extra_heads.{j}.{b}" for j in range(3) for b in block}
    return keys


def test_7b_mtp4_builds_on_meta_with_meta_keys():
    args = PRESETS["7b-mtp4"]
    model = build_model(args, device="meta")
    sd = model.state_dict()
    assert set(sd) == meta_7b_1t_4_keys()
    assert sd["layers.0.feed_forward.w1.weight"].shape == (11008, 4096)
    assert sd["output.weight"].shape == (32000, 4096)
    # 32 blocks × (4·4096² + 3·4096·11008 + 2·4096) + 2·32000·4096 + 4096 = 6,738,415,616 (LLaMA-2 7B's count).
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616

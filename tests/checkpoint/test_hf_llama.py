"""HF LLaMA import (and export) against `transformers` itself: a tiny LlamaForCausalLM written by
`save_pretrained` loads with the same logits; `rope_parameters` (where current transformers keep
`rope_theta`) is read; scaled RoPE variants are refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from wmtp.checkpoint import CheckpointError, load_model

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=64, max_position_embeddings=64, rms_norm_eps=1e-5)
TOKENS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


def hf_model(folder, **config):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY, **config})).eval()
    with torch.no_grad():  # norms at 1 hide permutation bugs less well: randomise them too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits.float()


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_hf_llama_with_rope_parameters_gives_transformers_logits(tmp_path, theta):
    model = hf_model(tmp_path / "hf", rope_parameters={"rope_type": "default", "rope_theta": theta})
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_theta"] == theta and "rope_theta" not in cfg  # where transformers put it
    loaded = load_model(tmp_path / "hf")
    assert loaded.args.rope_theta == theta
    ours = loaded(TOKENS, return_logits=True).logits[:, :, 0]
    torch.testing.assert_close(ours, hf_logits(model, TOKENS), atol=2e-5, rtol=1e-5)


def test_legacy_top_level_rope_theta_still_reads(tmp_path):
    model = hf_model(tmp_path / "hf", rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    path = tmp_path / "hf" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]  # transformers < 4.5x wrote it here
    path.write_text(json.dumps(cfg))
    ours = load_model(tmp_path / "hf")(TOKENS, return_logits=True).logits[:, :, 0]
    torch.testing.assert_close(ours, hf_logits(model, TOKENS), atol=2e-5, rtol=1e-5)
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"rope_theta=500000.0 disagrees with rope_parameters.rope_theta=10000.0"):
        load_model(tmp_path / "hf")


@pytest.mark.parametrize("edit, message", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
     r"rope_parameters.rope_type='llama3' is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_scaling.rope_type='linear' is not supported"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     r"rope_parameters has fields wmtp does not implement: \['partial_rotary_factor'\]"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
    ({"attention_bias": True}, r"attention_bias=True is not supported"),
    ({"head_dim": 16}, r"head_dim=16 != hidden_size / num_attention_heads = 8"),
])
def test_unsupported_hf_configs_are_refused_by_name(tmp_path, edit, message):
    hf_model(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path / "hf")


# ---------------------------------------------------------------- export (issue: hand a model on)


def _mtp_model():
    from wmtp.model.args import PRESETS
    from wmtp.model.transformer import build_model

    model = build_model(PRESETS["tiny"].replace(n_layers=5, n_future_tokens=3, rope_theta=500000.0), seed=5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("max_shard_bytes", [2 << 30, 20_000])
def test_hf_export_round_trips_head_1(tmp_path, max_shard_bytes):
    """Head 1 of a 3-head model exported as HF LLaMA: the HF import and transformers both read
    back the same logits as head 1 (identical for the import, the inverse permutation exactly)."""
    from wmtp.checkpoint import save_hf_llama
    from wmtp.parallel.gather import iter_full_tensors

    model = _mtp_model()
    folder = save_hf_llama(iter_full_tensors(model), model.args, tmp_path / "hf", max_shard_bytes=max_shard_bytes)
    files = sorted(p.name for p in folder.iterdir())
    if max_shard_bytes > 1 << 20:
        assert files == ["config.json", "model.safetensors"]
    else:
        assert "model.safetensors.index.json" in files and "model-00001-of-" in " ".join(files)
    head1 = model(TOKENS, return_logits=True).logits[:, :, 0]
    back = load_model(folder)
    assert back.args.n_future_tokens == 1 and back.args.n_layers == model.args.n_trunk_layers
    assert back.args.rope_theta == 500000.0
    assert torch.equal(back(TOKENS, return_logits=True).logits[:, :, 0], head1)
    hf = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(hf_logits(hf, TOKENS), head1, atol=2e-5, rtol=1e-5)


def test_export_writes_meta_and_hf_beside_the_wmtp_export(tmp_path):
    """`export_model` with `train.export_formats=[meta, hf]`: `export/meta` (Meta layout) and
    `export/hf` (HF LLaMA of head 1) read back with the model's logits."""
    from wmtp.config.loader import load_config
    from wmtp.parallel.export import export_model
    from wmtp.parallel.reduce import DistEnv

    model = _mtp_model()
    cfg = load_config(overrides=[f"run.output_dir={tmp_path}", "run.name=x", "train.export_formats=[meta,hf]"])
    out = export_model(model, cfg, DistEnv.from_env("cpu"))
    logits = model(TOKENS, return_logits=True).logits
    assert torch.equal(load_model(out)(TOKENS, return_logits=True).logits, logits)
    assert torch.equal(load_model(out / "meta")(TOKENS, return_logits=True).logits, logits)
    assert torch.equal(load_model(out / "hf")(TOKENS, return_logits=True).logits[:, :, 0], logits[:, :, 0])


def _sharded_export(rank: int, world_size: int, folder: str) -> dict:
    """Every rank joins each tensor's gather; rank 0 writes. Returns the largest tensor any rank
    held at once (proof that gathering is one tensor at a time)."""
    from pathlib import Path

    from wmtp.checkpoint import save_hf_llama
    from wmtp.parallel.fsdp import apply_fsdp
    from wmtp.parallel.gather import iter_full_tensors

    model = _mtp_model()
    apply_fsdp(model, mixed_precision=False)
    largest = {"numel": 0}

    def watched():
        for key, t in iter_full_tensors(model):
            largest["numel"] = max(largest["numel"], t.numel())
            yield key, t

    save_hf_llama(watched(), model.args, Path(folder), write=rank == 0, max_shard_bytes=20_000)
    return largest


@pytest.mark.distributed
def test_hf_export_from_a_2_rank_fsdp_model_gathers_one_tensor_at_a_time(tmp_path):
    from tests.fixtures.distributed import run_distributed

    ranks = run_distributed(_sharded_export, 2, str(tmp_path / "hf"))
    model = _mtp_model()
    assert all(r["numel"] == max(p.numel() for p in model.parameters()) for r in ranks)
    head1 = model(TOKENS, return_logits=True).logits[:, :, 0]
    assert torch.equal(load_model(tmp_path / "hf")(TOKENS, return_logits=True).logits[:, :, 0], head1)

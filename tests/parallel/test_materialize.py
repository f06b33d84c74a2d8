"""Build on the meta device → FSDP2 → load (`wmtp.parallel.materialize`, `components.policy_model`
/ `critic_model`): on 2 gloo ranks, every full tensor after gathering equals what one process
builds — from a Meta consolidated checkpoint (fewer and more heads too), a tiny HF LLaMA, a
critic checkpoint, the seeded init (flat mesh and HSDP), and a seeded critic started from the
policy trunk. Only rank 0 opens the weight files. One spawn for all of it (CI time)."""

from __future__ import annotations

import resource

import pytest
import torch

from tests.fixtures.distributed import run_distributed
from wmtp.config.loader import load_config
from wmtp.model.args import PRESETS
from wmtp.model.checkpoint import save_hf_llama, save_meta_checkpoint, save_value_model
from wmtp.model.transformer import build_model
from wmtp.model.value import build_value_model, value_args_from_policy
from wmtp.parallel.gather import gather_state_dict
from wmtp.recipes import components as C

ARGS = PRESETS["tiny"].replace(n_layers=6, n_future_tokens=4)  # 3 trunk blocks + 3 extra heads


def _cfg(*overrides):
    return load_config(overrides=["model.preset=tiny", "data.max_seq_len=32", "run.seed=11", *overrides])


def _equal(model, reference) -> list[str]:
    """Keys whose gathered full tensor differs from `reference`'s (every rank gathers)."""
    full = gather_state_dict(model)
    ref = reference.state_dict()
    assert set(full) == set(ref)
    return [k for k in ref if not torch.equal(full[k], ref[k])]


def _files_opened(fn):
    """(result, weight files this process opened while running fn)."""
    import builtins

    import safetensors.torch

    opened: list[str] = []
    real_open, real_load, real_sf = builtins.open, torch.load, safetensors.torch.load_file

    def spy_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    def spy_load(f, *a, **k):
        opened.append(str(f))
        return real_load(f, *a, **k)

    def spy_sf(f, *a, **k):
        opened.append(str(f))
        return real_sf(f, *a, **k)

    builtins.open, torch.load, safetensors.torch.load_file = spy_open, spy_load, spy_sf
    try:
        result = fn()
    finally:
        builtins.open, torch.load, safetensors.torch.load_file = real_open, real_load, real_sf
    return result, [f for f in opened if f.endswith((".pth", ".safetensors"))]


def _rank(rank, world_size, folders):
    layout = C.process_layout()
    out = {}

    # Seeded policy (flat mesh, then HSDP 2 x 1): today's one-process seeded init.
    for name, extra in (("seeded", []), ("seeded_hsdp", ["orchestration.fsdp_replicas=2", "orchestration.storage_path=/tmp/shared"])):
        cfg = _cfg(*extra)
        policy = C.policy_model(cfg, None, layout)
        assert C.is_fsdp_sharded(policy)
        out[name] = _equal(policy, C.build_policy(cfg, None, torch.device("cpu")))

    # A seeded critic started from the policy trunk, and one that is not.
    cfg = _cfg("train.activation_checkpointing=true")
    policy = C.policy_model(cfg, None, layout)
    ref_policy = C.build_policy(cfg, None, torch.device("cpu"))
    critic = C.critic_model(cfg, policy.args, layout, policy)
    out["critic_from_policy"] = _equal(critic, C.build_critic(cfg, ref_policy.args, torch.device("cpu"), ref_policy))
    cfg = _cfg("value_model.init_from_policy=false", "value_model.head=mlp")
    critic = C.critic_model(cfg, policy.args, layout, policy, requires_grad=False)
    out["critic_seeded"] = _equal(critic, C.build_critic(cfg, ref_policy.args, torch.device("cpu"), ref_policy))
    out["critic_frozen"] = not any(p.requires_grad for p in critic.parameters())

    # Checkpoints: Meta (4 heads, then 2 and 6 heads), HF LLaMA, a critic. Only rank 0 reads weights.
    opened = []
    for name, folder, extra in (("meta", folders["meta"], []), ("meta_fewer", folders["meta"], ["model.n_future_tokens=2"]),
                                ("meta_more", folders["meta"], ["model.n_future_tokens=6"]), ("hf", folders["hf"], [])):
        cfg = load_config(overrides=[f"model.checkpoint={folder}", "data.max_seq_len=32", *extra])
        policy, files = _files_opened(lambda cfg=cfg: C.policy_model(cfg, None, layout))
        opened += files
        out[name] = _equal(policy, C.build_policy(cfg, None, torch.device("cpu")))
    cfg = load_config(overrides=[f"value_model.checkpoint={folders['critic']}", "data.max_seq_len=32"])
    critic, files = _files_opened(lambda: C.critic_model(cfg, ARGS, layout))
    opened += files
    out["critic_checkpoint"] = _equal(critic, C.build_critic(cfg, ARGS, torch.device("cpu")))
    out["opened"] = opened
    out["max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out


@pytest.mark.distributed
def test_meta_build_shard_load_equals_the_full_build(tmp_path):
    save_meta_checkpoint(build_model(ARGS, seed=3), tmp_path / "meta", n_shards=2)
    save_hf_llama(build_model(ARGS.replace(n_layers=3, n_future_tokens=1), seed=4).state_dict().items(),
                  ARGS.replace(n_layers=3, n_future_tokens=1), tmp_path / "hf")
    critic = build_value_model(value_args_from_policy(ARGS), head="mlp", seed=5)
    save_value_model(critic, tmp_path / "critic")
    folders = {k: str(tmp_path / k) for k in ("meta", "hf", "critic")}

    results = run_distributed(_rank, 2, folders)

    for rank, out in enumerate(results):
        for case in ("seeded", "seeded_hsdp", "critic_from_policy", "critic_seeded", "meta", "meta_fewer",
                     "meta_more", "hf", "critic_checkpoint"):
            assert out[case] == [], (rank, case, out[case])
        assert out["critic_frozen"]
    # Rank 0 read each checkpoint's weights (meta: two consolidated shards, 3 loads); rank 1 none.
    assert len([f for f in results[0]["opened"] if f.endswith(".pth")]) >= 6
    assert any(f.endswith(".safetensors") for f in results[0]["opened"])
    assert results[1]["opened"] == []

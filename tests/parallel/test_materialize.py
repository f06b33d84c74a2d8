"""Build on the meta device → FSDP2 → load (`wmtp.parallel.materialize`, `wmtp.parallel.build.policy_model`
/ `critic_model`): on 2 gloo ranks, every full tensor after gathering equals what one process
builds — from a Meta consolidated checkpoint (fewer and more heads too), a tiny HF LLaMA, a
critic checkpoint, the seeded init (flat mesh and HSDP), and a seeded critic started from the
policy trunk. Only rank 0 opens the weight files. One spawn for all of it (CI time)."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.distributed import run_distributed
from wmtp.checkpoint import (
    ModelIdentityError,
    save_hf_llama,
    save_meta_checkpoint,
    save_model,
    save_value_model,
)
from wmtp.config.loader import load_config
from wmtp.model.args import PRESETS
from wmtp.model.transformer import build_model
from wmtp.model.value import build_value_model, value_args_from_policy
from wmtp.parallel.build import build_critic, build_policy, critic_model, is_fsdp_sharded, policy_model
from wmtp.parallel.gather import gather_state_dict
from wmtp.parallel.materialize import load_host_bytes
from wmtp.parallel.reduce import process_layout

ARGS = PRESETS["tiny"].replace(n_layers=6, n_future_tokens=4)  # 3 trunk blocks + 3 extra heads
# Big enough (≈ 60 M parameters, 230 MiB fp32) for its load to stand out of the resident set.
BIG = PRESETS["tiny"].replace(dim=512, n_layers=8, n_heads=8, n_kv_heads=8, vocab_size=32000, n_future_tokens=1)


def _cfg(*overrides):
    return load_config(overrides=["model.preset=tiny", "data.max_seq_len=32", "run.seed=11", *overrides])


def _equal(model, reference) -> list[str]:
    """Keys whose gathered full tensor differs from `reference`'s (every rank gathers)."""
    full = gather_state_dict(model)
    ref = reference.state_dict()
    assert set(full) == set(ref)
    return [k for k in ref if not torch.equal(full[k], ref[k])]


def _files_opened(fn, under: str):
    """(result, files under `under` this process opened while running fn)."""
    import builtins
    import io

    import safetensors
    import safetensors.torch

    opened: list[str] = []
    saved = (builtins.open, torch.load, safetensors.torch.load_file, safetensors.safe_open)

    def spy(real):
        def wrapper(file, *a, **k):
            opened.append(str(file))
            return real(file, *a, **k)
        return wrapper

    builtins.open = io.open = spy(saved[0])
    torch.load, safetensors.torch.load_file, safetensors.safe_open = (spy(f) for f in saved[1:])
    try:
        result = fn()
    finally:
        builtins.open = io.open = saved[0]
        torch.load, safetensors.torch.load_file, safetensors.safe_open = saved[1:]
    return result, [f for f in opened if f.startswith(under)]


def _peak_rss_bytes(reset: bool = False) -> int:
    """This process's peak resident set (`VmHWM`; `reset`: restart it from the current size)."""
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _rank(rank, world_size, folders):
    layout = process_layout()
    out = {}

    # Host memory, measured: the peak resident set grows by what loading holds. On CPU the shards
    # are host memory too.
    before = _peak_rss_bytes(reset=True)
    cfg = load_config(overrides=[f"model.checkpoint={folders['big']}", "data.max_seq_len=32"])
    big = policy_model(cfg, None, layout)
    out["rss_growth"] = _peak_rss_bytes() - before
    out["shard_bytes"] = sum(p.to_local().numel() * p.element_size() for p in big.parameters())
    del big

    # Seeded policy (flat mesh, then HSDP 2 x 1): today's one-process seeded init.
    for name, extra in (("seeded", []), ("seeded_hsdp", ["orchestration.fsdp_replicas=2", "orchestration.storage_path=/tmp/shared"])):
        cfg = _cfg(*extra)
        policy = policy_model(cfg, None, layout)
        assert is_fsdp_sharded(policy)
        out[name] = _equal(policy, build_policy(cfg, None, torch.device("cpu")))

    # A seeded critic started from the policy trunk, and one that is not.
    cfg = _cfg("train.activation_checkpointing=true")
    policy = policy_model(cfg, None, layout)
    ref_policy = build_policy(cfg, None, torch.device("cpu"))
    critic = critic_model(cfg, policy.args, layout, policy)
    out["critic_from_policy"] = _equal(critic, build_critic(cfg, ref_policy.args, torch.device("cpu"), ref_policy))
    cfg = _cfg("value_model.init_from_policy=false", "value_model.head=mlp")
    critic = critic_model(cfg, policy.args, layout, policy, requires_grad=False)
    out["critic_seeded"] = _equal(critic, build_critic(cfg, ref_policy.args, torch.device("cpu"), ref_policy))
    out["critic_frozen"] = not any(p.requires_grad for p in critic.parameters())

    # Checkpoints: Meta (4 heads, then 2 and 6 heads), HF LLaMA, a critic. Only rank 0 reads weights.
    opened = []
    for name, folder, extra in (("meta", folders["meta"], []), ("meta_fewer", folders["meta"], ["model.n_future_tokens=2"]),
                                ("meta_more", folders["meta"], ["model.n_future_tokens=6"]), ("hf", folders["hf"], [])):
        cfg = load_config(overrides=[f"model.checkpoint={folder}", "data.max_seq_len=32", *extra])
        policy, files = _files_opened(lambda cfg=cfg: policy_model(cfg, None, layout), folders["root"])
        opened += files
        out[name] = _equal(policy, build_policy(cfg, None, torch.device("cpu")))
    cfg = load_config(overrides=[f"value_model.checkpoint={folders['critic']}", "data.max_seq_len=32"])
    critic, files = _files_opened(lambda: critic_model(cfg, ARGS, layout), folders["root"])
    opened += files
    out["critic_checkpoint"] = _equal(critic, build_critic(cfg, ARGS, torch.device("cpu")))
    out["opened"] = opened

    # A setting the checkpoint contradicts is refused on every rank (rank 0 reads, all raise).
    cfg = load_config(overrides=[f"model.checkpoint={folders['meta']}", "data.max_seq_len=32", "model.params.dim=64"])
    with pytest.raises(ModelIdentityError, match="dim: config 64"):
        policy_model(cfg, None, layout)
    return out


@pytest.mark.distributed
def test_meta_build_shard_load_equals_the_full_build(tmp_path):
    save_meta_checkpoint(build_model(ARGS, seed=3), tmp_path / "meta", n_shards=2)
    save_hf_llama(build_model(ARGS.replace(n_layers=3, n_future_tokens=1), seed=4).state_dict().items(),
                  ARGS.replace(n_layers=3, n_future_tokens=1), tmp_path / "hf")
    critic = build_value_model(value_args_from_policy(ARGS), head="mlp", seed=5)
    save_value_model(critic, tmp_path / "critic")
    big = build_model(BIG, seed=6)
    save_model(big, tmp_path / "big")
    folders = {k: str(tmp_path / k) for k in ("meta", "hf", "critic", "big")} | {"root": str(tmp_path)}
    n_big, largest = sum(p.numel() for p in big.parameters()), max(p.numel() for p in big.parameters())
    del big

    results = run_distributed(_rank, 2, folders)

    for rank, out in enumerate(results):
        for case in ("seeded", "seeded_hsdp", "critic_from_policy", "critic_seeded", "meta", "meta_fewer",
                     "meta_more", "hf", "critic_checkpoint"):
            assert out[case] == [], (rank, case, out[case])
        assert out["critic_frozen"]
    # Measured host memory against the loading rule the dry run prints (rank 0: the checkpoint as
    # read + the scatter's copies of one tensor; rank 1: only those copies), shards aside (on GPUs
    # they are device memory, as the copies are).
    rank0 = load_host_bytes([(n_big, largest, True)], ranks_on_node=1, transients_on_host=True)
    rank1 = load_host_bytes([(n_big, largest, False)], ranks_on_node=1, transients_on_host=True)
    fp32_copy = 4 * n_big
    growth = [out["rss_growth"] - out["shard_bytes"] for out in results]
    print(f"load of a {fp32_copy / 2**20:.0f} MiB fp32 checkpoint on 2 gloo ranks, peak RSS growth beyond the shards: "
          f"rank 0 {growth[0] / 2**20:.0f} MiB (rule {rank0 / 2**20:.0f}), rank 1 {growth[1] / 2**20:.0f} MiB "
          f"(rule {rank1 / 2**20:.0f})")
    assert 0.85 * rank0 <= growth[0] <= 1.1 * rank0, (growth, rank0)
    assert growth[1] <= 1.1 * rank1, (growth, rank1)  # no copy of the checkpoint off rank 0

    # Rank 0 read each checkpoint (meta: two consolidated shards, 3 loads); rank 1 opened no file of any.
    assert len([f for f in results[0]["opened"] if f.endswith(".pth")]) >= 6
    assert any(f.endswith(".safetensors") for f in results[0]["opened"])
    assert any(f.endswith("params.json") for f in results[0]["opened"])
    assert results[1]["opened"] == []

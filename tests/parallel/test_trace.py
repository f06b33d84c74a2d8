"""The traced memory plan: the recipe's real setup and two optimizer steps on fake tensors over a
fake process group, measured by FSDPMemTracker, against the formula plan."""

from __future__ import annotations

import itertools

import pytest

from wmtp.cli import build_plan, main
from wmtp.config.loader import REPO_ROOT, ConfigError, load_config
from wmtp.config.topology import storage_path_problem
from wmtp.trace.memory import trace_in_subprocess

CONFIGS = REPO_ROOT / "configs"
# ~100M parameters each (policy: 8 blocks at D=768 + 32k vocabulary in and out; critic: its
# 5-block trunk + the embedding), the a100x4 settings otherwise (bf16, AC, FSDP2 over 4 ranks).
SMALL = ["model.preset=1b-mtp4", "model.params.dim=768", "model.params.n_layers=8", "model.params.n_heads=12",
         "model.params.n_kv_heads=12", "data.max_seq_len=512", "data.batch_size=2", "data.grad_accum=2"]
RECIPES = ["baseline", "ref_tuning", "critic", "verifiable", "rho1_weighted"]


def config(recipe: str, preset: str = "a100x4", overrides=()):
    return load_config(CONFIGS / "defaults.yaml", CONFIGS / f"recipe.{recipe}.yaml", preset, overrides=list(overrides))


def test_cli_dry_run_trace_of_a_small_preset_matches_the_formula(capsys):
    argv = ["train", "--recipe", "configs/recipe.verifiable.yaml", "--preset", "a100x4", "--dry-run", "--trace",
            *SMALL]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("traced_peak_gib_per_gpu: ")
    traced = float(out[-1].split(": ")[1])
    text = "\n".join(out)
    for category in ("Sharded Param", "Sharded Grad", "OptState", "Unsharded Param"):
        assert f"#   {category}:" in text, category
    # At critic_sync_interval 1 the learner's own sharded critic scores: no scoring copy is held.
    assert "#   policy:" in text and "#   critic:" in text and "#   scorer.model:" not in text
    formula = build_plan(config("verifiable", overrides=SMALL)).memory_gib["total"]
    assert traced > 0.5
    assert abs(formula - traced) / traced <= 0.10, (formula, traced)


def test_hsdp_trace_on_two_nodes_of_four_ranks():
    cfg = config("baseline", overrides=[*SMALL, "orchestration.num_workers=8", "orchestration.fsdp_replicas=2",
                                        "orchestration.storage_path=s3://bucket/wmtp/ray"])
    hsdp = trace_in_subprocess(cfg)
    flat = trace_in_subprocess(config("baseline", overrides=[*SMALL, "orchestration.num_workers=8"]))
    assert hsdp.mesh == [2, 4] and flat.mesh == [8]
    # Shards span 4 ranks, not 8: the sharded state per rank doubles.
    assert hsdp.by_category["Sharded Param"] == pytest.approx(2 * flat.by_category["Sharded Param"], rel=0.02)
    assert hsdp.models["policy"]["optimizer"] == pytest.approx(2 * flat.models["policy"]["optimizer"], rel=0.02)


def test_multi_node_runs_need_shared_storage():
    assert storage_path_problem(None, 1) is None
    assert "orchestration.storage_path" in storage_path_problem(None, 2)
    assert "orchestration.storage_path" in storage_path_problem("runs/ray", 2)
    assert storage_path_problem("s3://bucket/ray", 2) is None and storage_path_problem("/mnt/nfs/ray", 2) is None
    with pytest.raises(ConfigError, match="orchestration.storage_path"):
        config("baseline", overrides=["orchestration.num_workers=8", "orchestration.fsdp_replicas=2"])
    with pytest.raises(ConfigError, match="fsdp_replicas"):
        config("baseline", overrides=["orchestration.num_workers=4", "orchestration.fsdp_replicas=3",
                                      "orchestration.storage_path=s3://b/r"])


@pytest.mark.slow
@pytest.mark.parametrize("recipe,placement,preset", [
    *itertools.product(RECIPES, ["colocated", "async"], ["a100x4"]),
    *itertools.product(RECIPES, ["colocated"], ["a100x4-1b"])])
def test_shipped_recipes_fit_and_the_formula_agrees(recipe, placement, preset):
    cfg = config(recipe, preset, [f"orchestration.placement={placement}"])
    traced = trace_in_subprocess(cfg)
    formula = build_plan(cfg).memory_gib["total"]
    print(f"{recipe} {placement} {preset}: traced {traced.peak_gib:.2f} GiB, formula {formula:.2f} GiB")
    assert abs(formula - traced.peak_gib) / traced.peak_gib <= 0.10, (formula, traced.peak_gib)
    if preset == "a100x4":
        assert traced.peak_gib <= 72.0, traced.summary()


def test_cluster_files_are_a100_80gb_and_the_two_node_command_validates():
    import shlex

    import yaml

    one = yaml.safe_load((REPO_ROOT / "cluster" / "a100x4.yaml").read_text())
    two_text = (REPO_ROOT / "cluster" / "a100x4-2node.yaml").read_text()
    two = yaml.safe_load(two_text)
    for launcher in (one, two):
        for node in launcher["available_node_types"].values():
            assert node["node_config"]["machineType"] == "a2-ultragpu-4g"
            assert node["node_config"]["guestAccelerators"][0]["acceleratorType"] == "nvidia-a100-80gb"
    assert two["max_workers"] == 1 and len(two["available_node_types"]) == 2  # the head + one worker node
    # The command in the 2-node file's header: its overrides make a valid 2-node HSDP config.
    header = " ".join(ln.lstrip("#").strip().rstrip("\\") for ln in two_text.splitlines()[1:6])
    args = shlex.split(header[header.index("python -m wmtp train"):])
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    assert len(overrides) == 3, overrides
    cfg = config("verifiable", overrides=overrides)
    assert cfg.orchestration.num_workers == 8 and cfg.orchestration.fsdp_replicas == 2


def test_the_trace_env_reads_checkpoint_shapes_only_and_builds_full_length_batches(tmp_path):
    """The stand-ins the recipe gets through its `RecipeEnv` in the trace: a folder holding only
    params.json (a producing stage's shapes) gives its args and a state dict of its shapes, where
    the files' reader refuses it; the data is endless full-length batches, every position after
    BOS a target."""
    import json

    from wmtp.checkpoint import CHECKPOINT_FILES, CheckpointError
    from wmtp.data.streams import train_stream
    from wmtp.model.args import get_preset
    from wmtp.model.transformer import build_model
    from wmtp.parallel.reduce import DistEnv
    from wmtp.trace.memory import trace_env

    args = get_preset("tiny")
    (tmp_path / "params.json").write_text(json.dumps(args.to_params_json()))
    cfg = config("baseline", overrides=["data.max_seq_len=16", "data.batch_size=3"])
    env = trace_env(cfg, args.vocab_size, DistEnv())
    with pytest.raises(CheckpointError):
        CHECKPOINT_FILES.read_checkpoint_args(tmp_path)
    assert env.checkpoints.read_checkpoint_args(tmp_path) == args
    _, state = env.checkpoints.read_model_state(tmp_path)
    expected = build_model(args, device="meta").state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    data = env.load_data(cfg)
    stream = train_stream(data.train, cfg, env.layout)
    for _ in range(3):
        batch = stream.next()
        assert tuple(batch.tokens.shape) == (3, 16) and bool(batch.attention_mask.all())
        assert (batch.labels[:, 1:] != -100).all() and (batch.labels[:, 0] == -100).all()

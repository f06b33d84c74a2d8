"""The real recipes inside Ray Train workers (micro model, bundled data, a few steps).

- baseline, 2 workers × 4 rows == 1 process × 8 rows, step by step (global denominators);
- verifiable, async experience actors == colocated scoring with critic_sync_interval=1 and
  queue_depth=0, both on 2 workers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from wmtp.config.loader import load_config
from wmtp.config.paths import export_dir, run_dir
from wmtp.orchestration.launch import run_training
from wmtp.recipes import run_recipe
from wmtp.tracking.registry import build_run_logger

pytestmark = pytest.mark.ray


def micro_config(tmp_path: Path, recipe: str, name: str, *overrides: str):
    return load_config("configs/defaults.yaml", recipe, None, True, [
        f"run.output_dir={tmp_path / 'out'}", f"run.name={name}", "train.steps=3", "train.eval_every=3",
        "train.eval_batches=1", "train.checkpoint_every=3", "train.log_every=1", "train.heatmap_samples=0",
        "data.batch_size=4", "tracking.backends=[jsonl]", "orchestration.report_every=1",
        "orchestration.max_failures=0", *overrides])


def step_losses(cfg, key: str = "train/loss") -> dict[int, float]:
    lines = (run_dir(cfg) / "metrics.jsonl").read_text().splitlines()
    out = {}
    for line in map(json.loads, lines):
        metrics = line.get("metrics", line)
        if key in metrics:
            out[int(line["step"])] = float(metrics[key])
    return out


def test_baseline_on_two_workers_equals_one_process(ray_cluster, tmp_path):
    local = micro_config(tmp_path, "baseline", "local", "data.batch_size=8", "orchestration.enabled=false")
    run_recipe(local, make_logger=build_run_logger)
    ray_cfg = micro_config(tmp_path, "baseline", "ray2", "orchestration.num_workers=2")
    t0 = time.monotonic()
    final = run_training(ray_cfg)
    expected, got = step_losses(local), step_losses(ray_cfg)
    assert sorted(got) == [1, 2, 3], got
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert final["step"] == 3 and "val/ce" in final, (final, time.monotonic() - t0)


@pytest.fixture(scope="module")
def micro_critic(tmp_path_factory) -> str:
    """A critic made by the `critic` recipe in this process (2 steps), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("critic")
    cfg = micro_config(tmp, "critic", "critic", "train.steps=2", "train.checkpoint_every=2",
                       "train.eval_every=2", "orchestration.enabled=false")
    run_recipe(cfg, make_logger=build_run_logger)
    return str(export_dir(cfg))


def test_verifiable_async_experience_equals_colocated(ray_cluster, micro_critic, tmp_path):
    # FSDP2 on: every rank gathers the full critic to publish it to its own experience side.
    common = ("orchestration.num_workers=2", f"value_model.checkpoint={micro_critic}",
              "stage2.critic_sync_interval=1", "orchestration.queue_depth=0", "orchestration.fsdp=true")
    colocated = micro_config(tmp_path, "verifiable", "colocated", *common, "orchestration.placement=colocated")
    run_training(colocated)
    asynchronous = micro_config(tmp_path, "verifiable", "async", *common, "orchestration.placement=async",
                                "orchestration.num_experience_actors=1")
    final = run_training(asynchronous)
    for key in ("train/loss", "train/value_loss", "train/weights/mean"):
        expected, got = step_losses(colocated, key), step_losses(asynchronous, key)
        assert sorted(got) == [1, 2, 3], (key, got)
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), key
    assert step_losses(asynchronous, "train/critic_staleness") == {1: 0.0, 2: 0.0, 3: 0.0}
    assert final["step"] == 3

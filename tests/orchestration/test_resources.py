"""One function sizes a run on Ray: the dry run prints it, the launcher requests it and refuses a
cluster that can never hold it — at once, naming what is missing and what the cluster has."""

from __future__ import annotations

import time

import pytest

from tests.orchestration.helpers import short_config
from wmtp.cli import main, ray_resources
from wmtp.config.loader import load_config
from wmtp.orchestration.resources import UnschedulableError, check_fits, run_resources


def test_local_light_verifiable_needs_a_pool_per_rank():
    cfg = load_config(recipe_path="configs/recipe.verifiable.yaml", preset="local-light")
    need = run_resources(cfg)
    assert (need.workers, need.experience_actors, need.cpus, need.gpus) == (2, 2, 4.0, 0)
    assert need.explain() == "2 workers × 1 CPU + 2 experience actors × 1 CPU = 4 CPU"
    plan = ray_resources(cfg)  # the dry run's section, from the same function
    assert plan["total_cpus"] == 4.0 and plan["experience_actors"] == 2
    assert plan["ray_start"] == "ray start --head --num-cpus=4 --num-gpus=0"
    gpu = run_resources(load_config(recipe_path="configs/recipe.verifiable.yaml", preset="a100x4"))
    assert gpu.bundle() == {"CPU": 32.0, "GPU": 4.0} and gpu.experience_actors == 0  # colocated
    baseline = run_resources(load_config(recipe_path="configs/recipe.baseline.yaml", preset="local-light"))
    assert baseline.cpus == 2.0 and baseline.experience_actors == 0  # async, but nothing to score


def test_check_fits_names_the_missing_resources_and_the_cluster():
    cfg = load_config(recipe_path="configs/recipe.verifiable.yaml", preset="local-light")
    check_fits(run_resources(cfg), {"CPU": 4.0})
    with pytest.raises(UnschedulableError) as e:
        check_fits(run_resources(cfg), {"CPU": 2.0, "memory": 1e9}, what="run 'x'")
    msg = str(e.value)
    assert "run 'x' cannot be placed" in msg and "= 4 CPU" in msg and "the cluster has 2 CPU" in msg
    assert "missing: 2 CPU" in msg and "ray start --head --num-cpus=4" in msg
    with pytest.raises(UnschedulableError, match="0 GPU in total.*missing: 4 GPU"):
        check_fits(run_resources(load_config(recipe_path="configs/recipe.baseline.yaml", preset="a100x4")),
                   {"CPU": 64.0})


@pytest.mark.ray
def test_unplaceable_run_fails_once_fast_with_exit_2(ray_cluster, tmp_path, capsys):
    cfg = short_config(tmp_path, "too-big", workers=3)
    cfg.recipe, cfg.orchestration.placement = "verifiable", "async"  # 3 workers + 3 actors > 4 CPUs
    cfg.value_model.checkpoint = str(tmp_path)  # never read: refused before anything starts
    from wmtp.orchestration.launch import run_training

    started = time.monotonic()
    with pytest.raises(UnschedulableError, match="needs 3 workers × 1 CPU \\+ 3 experience actors × 1 CPU = 6 CPU"):
        run_training(cfg)
    assert time.monotonic() - started < 10
    code = main(["train", "--recipe", "configs/recipe.verifiable.yaml", "--preset", "local-light",
                 f"run.output_dir={tmp_path}", "orchestration.num_workers=3", f"value_model.checkpoint={tmp_path}"])
    assert code == 2 and "cannot be placed" in capsys.readouterr().err
    assert not (tmp_path / "verifiable-local-light").exists()

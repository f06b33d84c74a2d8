"""`wmtp tune`: search-space conversion, trial configs, and a 2-trial sweep on the toy recipe."""

from __future__ import annotations

import argparse
import time

import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from tests.orchestration.helpers import short_config
from tests.orchestration.toy_recipe import ToyRecipeBuilder
from tests.recipes.harness import REPO
from wmtp.config.loader import ConfigError
from wmtp.config.schema import WMTPConfig
from wmtp.config.tune import TuneSpace, load_tune_space
from wmtp.config.update import update_config
from wmtp.orchestration import commands
from wmtp.orchestration.tune import build_scheduler, run_tune, to_search_space


def test_shipped_space_converts_to_ray_tune_samplers():
    space = load_tune_space("tune_spaces/verifiable.yaml")
    converted = to_search_space(space)
    assert set(converted) == set(space.space)
    temp = converted["stage2.value_weighting.weight_temperature"]
    assert isinstance(temp, tune.search.sample.Float)
    assert (temp.lower, temp.upper) == (0.25, 4.0)
    assert isinstance(temp.get_sampler(), tune.search.sample.LogUniform)
    norm = converted["stage2.value_weighting.td_error_normalization"]
    assert isinstance(norm, tune.search.sample.Categorical) and norm.categories == ["zscore", "ema"]
    sched = build_scheduler(space)
    assert isinstance(sched, ASHAScheduler)
    assert (sched.metric, sched._metric_op, sched._max_t) == (space.metric, -1.0 if space.mode == "min" else 1.0,
                                                             space.scheduler.max_t)
    assert isinstance(build_scheduler(TuneSpace.model_validate(
        {"metric": "m", "mode": "max", "num_samples": 1, "scheduler": {"type": "fifo"},
         "space": {"optim.lr": {"type": "choice", "values": [0.1]}}})), FIFOScheduler)


def test_trial_values_are_applied_and_validated():
    cfg = update_config(WMTPConfig(), {"stage2.value_weighting.weight_temperature": 0.5, "train.steps": 7}, "tune trial")
    assert cfg.stage2.value_weighting.weight_temperature == 0.5 and cfg.train.steps == 7
    with pytest.raises(ConfigError, match="weight_temperature"):
        update_config(WMTPConfig(), {"stage2.value_weighting.weight_temperature": -1.0}, "tune trial")
    with pytest.raises(ConfigError, match="no section"):
        update_config(WMTPConfig(), {"nope.lr": 1.0}, "tune trial")


def test_tune_command_is_registered_with_config_flags():
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tune", "--space", "tune_spaces/verifiable.yaml", "--recipe", "verifiable",
                              "--use-micro-model", "train.steps=3"])
    assert args.func is commands.run_tune_command
    assert args.space == "tune_spaces/verifiable.yaml" and args.overrides == ["train.steps=3"]


def test_space_for_another_recipe_is_refused(tmp_path):
    space = load_tune_space("tune_spaces/verifiable.yaml")
    with pytest.raises(ConfigError, match="recipe"):
        run_tune(WMTPConfig(recipe="baseline"), space)


@pytest.mark.ray
def test_two_trial_sweep_with_asha_and_nested_mlflow_runs(ray_cluster, mlflow_sqlite, tmp_path):
    cfg = short_config(tmp_path, "sweep", steps=6, workers=1)
    cfg.tracking.backends = ["mlflow"]
    cfg.tracking.uri = mlflow_sqlite.uri
    space = TuneSpace.model_validate({
        "metric": "val/ce", "mode": "min", "num_samples": 2, "max_concurrent_trials": 2,
        "scheduler": {"type": "asha", "max_t": 10, "grace_period": 2, "reduction_factor": 2},
        "fixed": {"train.eval_every": 2},
        "space": {"optim.lr": {"type": "choice", "values": [0.001, 0.1]}},
    })
    summary = run_tune(cfg, space, recipe_builder=ToyRecipeBuilder(str(tmp_path / "rec")), num_samples=2)
    assert len(summary.trials) == 2 and all(t["error"] is None for t in summary.trials)
    assert all(t["value"] is not None for t in summary.trials)
    # With the same data, a larger step fits the linear model faster on this budget.
    if {t["params"]["optim.lr"] for t in summary.trials} == {0.001, 0.1}:
        assert summary.best_params == {"optim.lr": 0.1}
    client = mlflow_sqlite.client()
    runs = client.search_runs(client.get_experiment_by_name("wmtp").experiment_id)
    parent = [r for r in runs if r.info.run_id == summary.parent_run_id]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary.parent_run_id]
    assert len(parent) == 1 and len(children) == 2
    assert all(r.data.metrics.get("val/ce") is not None for r in children)
    assert "best/val/ce" in parent[0].data.metrics
    # The table names the tuned metric and each trial's fate; best.yaml is written and printed.
    table = summary.format()
    assert "val/ce" in table.splitlines()[1] and table.count("completed") == 2
    assert summary.best_config is not None and f"wmtp train --config {summary.best_config}" in table
    assert "sweep-best" in summary.best_config.read_text()
    # Trial runs are named by their sampled values, and none is left RUNNING (ASHA may stop one).
    names = sorted(r.info.run_name for r in children)
    assert all(n.startswith("lr=") and " #" in n for n in names) and len(set(names)) == 2, names
    for r in children:
        assert r.info.status in ("FINISHED", "KILLED"), (r.info.run_name, r.info.status)
        if r.info.status == "KILLED":
            assert "stopped early by the Tune scheduler" in r.data.tags["wmtp.status_reason"]


def test_cli_tune_user_errors_exit_2_without_starting_ray(tmp_path, capsys):
    from wmtp.cli import main

    assert main(["tune", "--space", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("metric: val/ce\nmode: min\nnum_samples: 2\nspace:\n  optim.lrr: {type: choice, values: [0.1]}\n")
    assert main(["tune", "--space", str(bad)]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    # The verifiable space on the baseline recipe: refused before any trial starts.
    assert main(["tune", "--space", "tune_spaces/verifiable.yaml", "--recipe", "baseline"]) == 2
    assert "recipe" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.ray
def test_sweep_summary_fates_best_yaml_and_rerun_resumes(ray_cluster, tmp_path, capsys):
    """4 sequential trials: ASHA stops the worse ones at its first rung, the table says so, best.yaml
    is the as-given config with the best value (no trial name, no absolute path) and validates,
    the same call again resumes the finished sweep instead of starting a new one."""
    from wmtp.config.loader import load_config

    cfg = short_config(tmp_path, "fates", steps=8, workers=1)
    cfg.run.output_dir = "out"  # relative, as a user writes it: anchored to the cwd for the run
    space = TuneSpace.model_validate({
        "metric": "val/ce", "mode": "min", "num_samples": 4, "max_concurrent_trials": 1,
        "scheduler": {"type": "asha", "max_t": 20, "grace_period": 2, "reduction_factor": 2},
        "fixed": {"train.eval_every": 2},
        "space": {"optim.lr": {"type": "choice", "values": [0.0001, 0.0003, 0.1, 0.2]}},
    })
    builder = ToyRecipeBuilder(str(tmp_path / "rec"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        summary = run_tune(cfg, space, recipe_builder=builder)
        fates = [t["fate"] for t in summary.trials]
        assert any(f.startswith("stopped by ASHA at iteration") for f in fates), fates
        assert "completed" in fates and not summary.resumed
        table = summary.format()
        assert "val/ce" in table.splitlines()[1] and "stopped by ASHA" in table
        assert summary.best_config == tmp_path.joinpath("out/tune-fates/best.yaml").relative_to(tmp_path)
        assert f"wmtp train --config {summary.best_config}" in table
        text = summary.best_config.read_text()
        assert str(tmp_path) not in text and "tune-fates-" not in text
        best = load_config(summary.best_config)
        assert best.optim.lr == summary.best_params["optim.lr"] and best.run.name == "fates-best"
        assert best.run.output_dir == "out" and best.train.eval_every == 2
        # The same command again: the sweep is restored (same trials and values), not rerun.
        again = run_tune(cfg, space, recipe_builder=builder)
        assert again.resumed and [t["trial"] for t in again.trials] == [t["trial"] for t in summary.trials]
        assert again.best_value == summary.best_value
        # Another space under the same name is refused (a new sweep needs a new run.name).
        other = space.model_copy(update={"num_samples": 5})
        with pytest.raises(ConfigError, match="already exists"):
            run_tune(cfg, other, recipe_builder=builder)


def test_best_yaml_pins_the_critic_the_sweep_trained_when_it_lies_below_the_working_dir(tmp_path, monkeypatch):
    """The trials scored with the critic the sweep's first stage made; `best.yaml` (run name
    `<name>-best`) names it, relative to the working dir, so training it does not train another
    critic. A critic outside the working dir (a job's temporary upload as cwd) is not pinned."""
    from wmtp.config.loader import load_config
    from wmtp.orchestration.tune import produced_inputs, write_best_config

    monkeypatch.chdir(tmp_path)
    given = load_config(str(REPO / "configs/defaults.yaml"),
                        str(REPO / "configs/recipe.verifiable.yaml"), "local-light")
    assert given.value_model.checkpoint is None
    space = load_tune_space(str(REPO / "tune_spaces/verifiable.yaml"))
    best = {"stage2.value_weighting.weight_temperature": 0.5}
    made = given.model_copy(deep=True)
    made.value_model.checkpoint = str(tmp_path / "runs/verifiable-local-light-critic/export")
    inputs = produced_inputs(given, made)
    assert inputs == {"value_model.checkpoint": "runs/verifiable-local-light-critic/export"}
    path = write_best_config(given, space, best, tmp_path / "runs/tune-x/best.yaml", inputs=inputs)
    text = path.read_text()
    assert str(tmp_path) not in text
    written = load_config(str(path))
    assert written.value_model.checkpoint == "runs/verifiable-local-light-critic/export"
    assert written.run.name == "verifiable-local-light-best" and written.stage2.value_weighting.weight_temperature == 0.5
    elsewhere = given.model_copy(deep=True)
    elsewhere.value_model.checkpoint = "/somewhere/else/critic/export"
    assert produced_inputs(given, elsewhere) == {}
    assert produced_inputs(made, made) == {}  # given by the user: already in the config


def test_the_sweep_driver_frees_a_group_whose_creating_actor_died_and_nothing_else(ray_cluster):
    """What a stopped trial leaves (Ray Train's controller, an actor, made its worker group; the
    group outlives it, reserved for the job): removed. A group of a live actor, the driver's own,
    and a detached one stay."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    from wmtp.orchestration.ray_runtime import remove_orphaned_placement_groups
    from wmtp.orchestration.tune import GroupReaper

    @ray.remote(num_cpus=0)
    class Controller:
        def make(self, lifetime=None):
            group = placement_group([{"CPU": 0.01}], lifetime=lifetime)
            ray.get(group.ready())
            return group

    stopped, live = Controller.remote(), Controller.remote()
    orphan, kept = ray.get(stopped.make.remote()), ray.get(live.make.remote())
    detached = ray.get(stopped.make.remote("detached"))
    own = placement_group([{"CPU": 0.01}])
    ray.get(own.ready())
    ray.kill(stopped)
    try:
        deadline = time.monotonic() + 60
        while placement_group_table(orphan)["state"] != "CREATED" or not _creator_dead(orphan):
            assert time.monotonic() < deadline, "the killed actor's group never showed its creator dead"
            time.sleep(0.2)
        assert placement_group_table(orphan)["state"] == "CREATED"  # the leak: still reserved
        reaper = GroupReaper(interval_s=0.0)
        reaper.on_step_end(0, [])
        assert reaper.removed == 1
        assert placement_group_table(orphan)["state"] == "REMOVED"
        assert {placement_group_table(g)["state"] for g in (kept, own, detached)} == {"CREATED"}
        assert remove_orphaned_placement_groups() == []
    finally:
        for group in (kept, own, detached):
            remove_placement_group(group)
        ray.kill(live)


def _creator_dead(group) -> bool:
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    raw = state._connect_and_get_accessor().get_placement_group_info(group.id)
    return gcs_pb2.PlacementGroupTableData.FromString(raw).creator_actor_dead

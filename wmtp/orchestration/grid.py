"""A fixed grid of runs as one Ray Tune experiment: every (arm, seed) pair once, FIFO, at most
`max_concurrent` at a time, one CPU (one torch thread) each, under one MLflow parent run, resumed
with `Tuner.restore` when the same grid is started again. `wmtp study` runs its arms this way.

    run_grid(grid, trial, log=print)

What a trial does (train, measure) is the caller's `trial(arm, seed, parent_run_id) -> metrics`,
a picklable callable; this module is the only part of the grid that knows Ray.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wmtp.config.schema import WMTPConfig

Trial = Callable[[str, int, "str | None"], Mapping[str, float]]


@dataclass
class Grid:
    name: str  # the Tune experiment's and the parent run's name
    arms: list[str]
    seeds: list[int]
    max_concurrent: int
    config: WMTPConfig  # where it runs: the Ray address, the storage, the tracking of the parent run
    done_before: int = 0  # runs an earlier launch finished (the progress lines count them)


def run_grid(grid: Grid, trial: Trial, *, log: Callable[[str], None] = print,
             finish: Callable[[Any], None] | None = None) -> None:
    """Run (or resume) every trial of `grid`; `finish(parent)` is called after the last trial with
    the parent MLflow run (None when MLflow is not among the tracking backends)."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from wmtp.orchestration.ray_runtime import ensure_ray
    from wmtp.orchestration.storage import resolve_storage
    from wmtp.orchestration.tune import parent_run

    cfg = grid.config
    ensure_ray(cfg.orchestration.address, local_cpus=float(grid.max_concurrent))
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    verbose = os.environ.get("WMTP_VERBOSE") == "1"
    if not verbose:  # as `wmtp tune`: Tune's tables only with --verbose; GridProgress prints a line per run
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    parent = parent_run(cfg, grid.name, None)
    storage = resolve_storage(cfg.orchestration.storage_path, cfg.run.output_dir)
    trainable = tune.with_resources(
        tune.with_parameters(_grid_trial, trial=trial, parent_run_id=parent.run_id if parent else None),
        {"CPU": 1.0})
    experiment = f"{storage.path.rstrip('/')}/{grid.name}"
    try:
        if tune.Tuner.can_restore(experiment, storage_filesystem=storage.filesystem):
            log(f"[wmtp] {grid.name}: resuming {experiment}")
            tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True,
                                       storage_filesystem=storage.filesystem)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"arm": tune.grid_search(grid.arms), "seed": tune.grid_search(grid.seeds)},
                tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=grid.max_concurrent,
                                            scheduler=FIFOScheduler()),
                run_config=tune.RunConfig(name=grid.name, storage_path=storage.path,
                                          storage_filesystem=storage.filesystem,
                                          callbacks=[_progress(grid, log)], verbose=None if verbose else 0),
            )
        tuner.fit()
        if finish is not None:
            finish(parent)
    finally:
        if parent is not None:
            parent.close()


def _grid_trial(params: dict[str, Any], *, trial: Trial, parent_run_id: str | None) -> None:
    """One (arm, seed) trial in its Tune process: the caller's work, then one report."""
    from ray import tune

    tune.report(dict(trial(params["arm"], int(params["seed"]), parent_run_id)))


def _progress(grid: Grid, log: Callable[[str], None]) -> Any:
    """A Tune callback printing one line per finished (arm, seed) run: done/total (counting the
    runs an earlier launch finished), elapsed, ETA of this launch's remaining runs."""
    from ray import tune

    from wmtp.evaluation.progress import format_eta

    total = len(grid.arms) * len(grid.seeds)

    class GridProgress(tune.Callback):
        def setup(self, **info: Any) -> None:
            self.t0, self.done = time.monotonic(), 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            elapsed, finished = time.monotonic() - self.t0, grid.done_before + self.done
            eta = format_eta(elapsed / self.done * (total - finished)) if finished < total else "0s"
            params = trial.config or {}
            log(f"[wmtp] {grid.name}: run {finished}/{total} done ({params.get('arm')} "
                f"s{params.get('seed')}), elapsed {format_eta(elapsed)}, ETA {eta}")

    return GridProgress()


__all__ = ["Grid", "Trial", "run_grid"]

"""`wmtp tune`: a Ray Tune sweep whose trials are whole Ray Train runs (DESIGN.md §7).

    run_tune(cfg, space) -> TuneSummary

- The search space (`tune_spaces/*.yaml`, validated as `wmtp.config.tune.TuneSpace`) maps dotted
  config keys to distributions; `to_search_space` turns it into `ray.tune` objects.
- Each trial is a FUNCTION trainable (`wmtp_tune_trial`): it applies the trial's dotted values and
  the space's `fixed` overrides to the base config, then builds and fits ONE TorchTrainer whose
  reports reach Tune through `TuneReportCallback` (Tune cannot take a V2 TorchTrainer directly).
- ASHA (or FIFO) ranks trials on the space's validation `metric`; Tune's time unit is the number of
  reports (`training_iteration`): one per `orchestration.report_every` steps plus one per checkpoint.
- MLflow: one parent run for the sweep; each trial's rank 0 logs a nested run under it.
Trials share the base seed, so they see the same data order and differ only by the searched knobs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from wmtp.config.loader import ConfigError, validate_config
from wmtp.config.paths import run_name
from wmtp.config.schema import WMTPConfig
from wmtp.config.tune import AshaScheduler, Choice, LogUniform, RandInt, TuneSpace, Uniform
from wmtp.orchestration.console import trial_status_callback
from wmtp.orchestration.launch import RecipeBuilder, build_trainer, run_training, with_absolute_paths
from wmtp.orchestration.ray_runtime import cpus_needed, ensure_ray
from wmtp.orchestration.storage import resolve_storage

TRIAL_DRIVER_CPUS = 0.01

# Distribution type → ray.tune sampler.
DISTRIBUTIONS: dict[type, Callable[[Any], Any]] = {
    LogUniform: lambda d: tune.loguniform(d.lower, d.upper),
    Uniform: lambda d: tune.uniform(d.lower, d.upper),
    RandInt: lambda d: tune.randint(d.lower, d.upper),
    Choice: lambda d: tune.choice(list(d.values)),
}


def to_search_space(space: TuneSpace) -> dict[str, Any]:
    """Dotted key → `ray.tune` sampler (the trial's config dict keeps the dotted keys)."""
    return {key: DISTRIBUTIONS[type(dist)](dist) for key, dist in space.space.items()}


def build_scheduler(space: TuneSpace) -> TrialScheduler:
    s = space.scheduler
    if isinstance(s, AshaScheduler):
        return ASHAScheduler(time_attr="training_iteration", metric=space.metric, mode=space.mode,
                             max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    return FIFOScheduler()


def apply_dotted(cfg: WMTPConfig, values: Mapping[str, Any]) -> WMTPConfig:
    """`cfg` with dotted-key values set (validated once; errors name the key)."""
    tree = cfg.model_dump(mode="json")
    for key, value in values.items():
        node = tree
        *sections, leaf = key.split(".")
        for part in sections:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"tune: {key} does not name a config field (no section {part!r})")
            node = node[part]
        node[leaf] = value
    return validate_config(tree)


@dataclass
class TuneSummary:
    name: str
    metric: str
    mode: str
    best_params: dict[str, Any] | None
    best_value: float | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    parent_run_id: str | None = None

    def format(self) -> str:
        lines = [f"tune {self.name}: {len(self.trials)} trials, {self.metric} ({self.mode})"]
        for t in self.trials:
            value = "—" if t["value"] is None else f"{t['value']:.5g}"
            lines.append(f"  {t['trial']}: {self.metric}={value} iterations={t['iterations']} {t['params']}")
        if self.best_params is not None:
            lines.append(f"best: {self.metric}={self.best_value:.5g} with {self.best_params}")
        return "\n".join(lines)


def wmtp_tune_trial(params: dict[str, Any], *, base: dict[str, Any], fixed: dict[str, Any],
                    sweep: str, parent_run_id: str | None, recipe_builder: RecipeBuilder | None) -> None:
    """One trial: the base config + fixed + this trial's values, trained by one TorchTrainer."""
    cfg = apply_dotted(WMTPConfig.model_validate(base), {**fixed, **params})
    cfg.run.name = f"{sweep}-{tune.get_context().get_trial_id()}"
    from wmtp.tracking.registry import trial_label

    trainer = build_trainer(cfg, recipe_builder=recipe_builder, callbacks=[TuneReportCallback()],
                            parent_run_id=parent_run_id, label=trial_label(tune.get_context().get_trial_id(), params))
    trainer.fit()


def run_tune(cfg: WMTPConfig, space: TuneSpace, *, recipe_builder: RecipeBuilder | None = None,
             num_samples: int | None = None) -> TuneSummary:
    """Run the sweep `space` over `cfg`; returns the trials' final metric values and the best one."""
    if space.recipe is not None and space.recipe != cfg.recipe:
        raise ConfigError(f"tune space is for recipe {space.recipe!r} but the config's recipe is {cfg.recipe!r}")
    trials = space.max_concurrent_trials or 1
    ensure_ray(cfg.orchestration.address, local_cpus=trials * (cpus_needed(cfg) + TRIAL_DRIVER_CPUS))
    # Reports before the first validation lack the metric; ASHA skips those (strict checking would
    # fail the trial instead).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    cfg = with_absolute_paths(cfg)
    if recipe_builder is None:
        from wmtp.recipes.chain import resolve_inputs

        # A missing critic / reference is produced once, before the trials (as `wmtp train` does).
        cfg = resolve_inputs(cfg, run_training)
    sweep = f"tune-{run_name(cfg)}"
    parent = _parent_run(cfg, sweep, space)
    storage = resolve_storage(cfg.orchestration.storage_path, cfg.run.output_dir)
    trainable = tune.with_parameters(
        wmtp_tune_trial, base=cfg.model_dump(mode="json"), fixed=dict(space.fixed), sweep=sweep,
        parent_run_id=parent.run_id if parent else None, recipe_builder=recipe_builder)
    # The trial function only drives its TorchTrainer, whose workers reserve the CPUs/GPUs; Tune
    # refuses an empty request, so the driver asks for a sliver of a CPU.
    trainable = tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPUS})
    tuner = tune.Tuner(
        trainable,
        param_space=to_search_space(space),
        tune_config=tune.TuneConfig(num_samples=num_samples or space.num_samples,
                                    max_concurrent_trials=space.max_concurrent_trials,
                                    scheduler=build_scheduler(space)),
        run_config=tune.RunConfig(name=sweep, storage_path=storage.path, storage_filesystem=storage.filesystem,
                                  callbacks=[trial_status_callback(cfg, sweep)]),
    )
    try:
        grid = tuner.fit()
        summary = _summarise(grid, sweep, space, parent.run_id if parent else None)
        if parent is not None:
            parent.log_params({"tune.metric": space.metric, "tune.mode": space.mode,
                               **{f"tune.space.{k}": str(v.model_dump()) for k, v in space.space.items()}})
            if summary.best_value is not None:
                parent.log_metrics({f"best/{space.metric}": summary.best_value}, step=0)
    finally:
        if parent is not None:
            parent.close()
    if summary.best_params is None:
        reported = sorted({k for t in summary.trials for k in t.get("metrics", [])})
        raise ConfigError(f"tune space metric {space.metric!r} was never reported by any trial; "
                          f"reported metrics: {', '.join(reported) or 'none'}")
    return summary


def _summarise(grid: Any, sweep: str, space: TuneSpace, parent_run_id: str | None) -> TuneSummary:
    trials = []
    for result in grid:
        metrics = result.metrics or {}
        value = metrics.get(space.metric)
        trials.append({
            "trial": metrics.get("trial_id", "?"),
            "params": {k: v for k, v in (result.config or {}).items()},
            "value": value if isinstance(value, int | float) and math.isfinite(value) else None,
            "iterations": metrics.get("training_iteration", 0),
            "error": str(result.error) if result.error else None,
            "metrics": sorted(k for k in metrics if "/" in k),
        })
    scored = [t for t in trials if t["value"] is not None]
    best = (min if space.mode == "min" else max)(scored, key=lambda t: t["value"]) if scored else None
    return TuneSummary(sweep, space.metric, space.mode, best["params"] if best else None,
                       best["value"] if best else None, trials, parent_run_id)


def _parent_run(cfg: WMTPConfig, sweep: str, space: TuneSpace) -> Any | None:
    """The sweep's parent MLflow run (None when MLflow is not among the tracking backends)."""
    if "mlflow" not in cfg.tracking.backends:
        return None
    from wmtp.tracking.registry import build_logger, mlflow_run_id

    t = cfg.tracking
    logger = build_logger(["mlflow"], run_dir=Path(cfg.run.output_dir) / sweep, run_name=sweep,
                          experiment=t.experiment, uri=t.uri, artifact_location=t.artifact_location)
    return _ParentRun(logger, mlflow_run_id(logger))


@dataclass
class _ParentRun:
    logger: Any
    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.logger.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.logger.log_metrics(metrics, step)

    def close(self) -> None:
        self.logger.close()


__all__ = ["run_tune", "to_search_space", "build_scheduler", "apply_dotted", "TuneSummary"]

"""Tune sweeps, the cluster layer; the same concept as wmtp.config.tune: the sweep run on Ray.

`wmtp tune`: a Ray Tune sweep whose trials are whole Ray Train runs (docs/DISTRIBUTED.md).

    run_tune(cfg, space) -> TuneSummary

- The search space (`tune_spaces/*.yaml`, validated as `wmtp.config.tune.TuneSpace`) maps dotted
  config keys to distributions; `to_search_space` turns it into `ray.tune` objects.
- Each trial is a FUNCTION trainable (`wmtp_tune_trial`): it applies the trial's dotted values and
  the space's `fixed` overrides to the base config, then builds and fits ONE TorchTrainer whose
  reports reach Tune through `TuneReportCallback` (Tune cannot take a V2 TorchTrainer directly).
- ASHA (or FIFO) ranks trials on the space's validation `metric`; Tune's time unit is the number of
  reports (`training_iteration`): one per `orchestration.report_every` steps plus one per checkpoint.
- MLflow: one parent run for the sweep; each trial's rank 0 logs a nested run under it.
Trials share the base seed, so they see the same data order and differ only by the searched knobs;
the sampler is seeded with it too (the same command samples the same trials).
- Resume: the same command again continues the sweep in `<storage>/tune-<run name>`; `best.yaml`
  and `sweep.json` (what the sweep is, checked on resume) are in `<output_dir>/tune-<run name>/`.
"""
# One module (over 300 lines): search space, trial function, resume, summary and best.yaml all hang on the sweep's identity.

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator

from wmtp.config.loader import ConfigError
from wmtp.config.paths import run_name
from wmtp.config.schema import WMTPConfig
from wmtp.config.tune import AshaScheduler, Choice, LogUniform, RandInt, TuneSpace, Uniform
from wmtp.config.update import update_config
from wmtp.orchestration.console import trial_status_callback
from wmtp.orchestration.launch import RecipeBuilder, build_trainer, run_training, with_absolute_paths
from wmtp.orchestration.ray_runtime import ensure_ray, remove_orphaned_placement_groups
from wmtp.orchestration.resources import TRIAL_DRIVER_CPUS, check_fits, run_resources
from wmtp.orchestration.storage import resolve_storage

log = logging.getLogger(__name__)

# How often the sweep driver looks for worker groups left by stopped trials (a GCS table read).
REAP_INTERVAL_S = 5.0

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


FATE_COMPLETED = "completed"
FATE_FAILED = "failed"
FATE_UNFINISHED = "unfinished (interrupted)"


@dataclass
class TuneSummary:
    name: str
    metric: str
    mode: str
    best_params: dict[str, Any] | None
    best_value: float | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    parent_run_id: str | None = None
    best_config: Path | None = None
    interrupted: bool = False
    resumed: bool = False
    experiment_path: str | None = None

    def format(self) -> str:
        """The summary table: each trial's fate, tuned metric, reports and values; then the best."""
        head = f"tune {self.name}: {len(self.trials)} trials, {self.metric} ({self.mode})"
        if self.resumed:
            head += ", resumed"
        keys = sorted({k for t in self.trials for k in t["params"]})
        rows = [["trial", "fate", self.metric, "iterations", *keys]]
        for t in self.trials:
            value = "—" if t["value"] is None else f"{t['value']:.5g}"
            rows.append([t["trial"], t["fate"], value, str(t["iterations"]),
                         *(_short(t["params"].get(k)) for k in keys)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head, *("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)]
        if self.best_params is not None:
            lines.append(f"best: {self.metric}={self.best_value:.5g} ({self.best_trial}) with {self.best_params}")
        if self.best_config is not None:
            lines.append(f"best config: {self.best_config}")
            lines.append(f"train it:    wmtp train --config {self.best_config}")
        if self.interrupted:
            lines.append("interrupted: the sweep's state is saved; rerun the same command to resume it")
        return "\n".join(lines)

    @property
    def best_trial(self) -> str | None:
        return next((t["trial"] for t in self.trials if t["params"] == self.best_params
                     and t["value"] == self.best_value), None)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def wmtp_tune_trial(params: dict[str, Any], *, base: dict[str, Any], fixed: dict[str, Any],
                    sweep: str, parent_run_id: str | None, recipe_builder: RecipeBuilder | None) -> None:
    """One trial: the base config + fixed + this trial's values, trained by one TorchTrainer."""
    cfg = update_config(WMTPConfig.model_validate(base), {**fixed, **params}, "tune trial")
    cfg.run.name = f"{sweep}-{tune.get_context().get_trial_id()}"
    from wmtp.tracking.registry import trial_label

    trainer = build_trainer(cfg, recipe_builder=recipe_builder, callbacks=[TuneReportCallback()],
                            parent_run_id=parent_run_id, label=trial_label(tune.get_context().get_trial_id(), params))
    trainer.fit()


def run_tune(cfg: WMTPConfig, space: TuneSpace, *, recipe_builder: RecipeBuilder | None = None,
             num_samples: int | None = None) -> TuneSummary:
    """Run (or resume) the sweep `space` over `cfg`; returns the trials' fates and the best one.

    The sweep lives in `<storage>/tune-<run name>`; rerunning the same command resumes it there
    (finished trials are kept, interrupted ones continue from their checkpoints). Sampling is
    seeded with `run.seed`. `best.yaml` (beside the sweep's MLflow folder) is `cfg` with the
    space's fixed values and the best trial's values: the as-given config, so no trial names
    and no absolute paths.
    """
    if space.recipe is not None and space.recipe != cfg.recipe:
        raise ConfigError(f"tune space is for recipe {space.recipe!r} but the config's recipe is {cfg.recipe!r}")
    given = cfg
    trials = space.max_concurrent_trials or 1
    need = run_resources(cfg)
    ensure_ray(cfg.orchestration.address, local_cpus=trials * (need.cpus + TRIAL_DRIVER_CPUS),
               job_name=f"tune-{run_name(cfg)}")
    check_fits(need, ray.cluster_resources(), what=f"a trial of tune-{run_name(cfg)}", extra_cpus=TRIAL_DRIVER_CPUS)
    # Reports before the first validation lack the metric; ASHA skips those (strict checking would
    # fail the trial instead).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    verbose = os.environ.get("WMTP_VERBOSE") == "1"
    if not verbose:
        # Ray Tune's new output engine prints its experiment box and a TensorBoard hint even at
        # verbose=0; the classic reporter at verbose=0 prints nothing. TrialEvents prints instead.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    cfg = with_absolute_paths(cfg)
    if recipe_builder is None:
        from wmtp.recipes.chain import resolve_inputs

        # A missing critic / reference is produced once, before the trials (as `wmtp train` does).
        cfg = resolve_inputs(cfg, run_training)
    sweep = f"tune-{run_name(cfg)}"
    samples = num_samples or space.num_samples
    sweep_dir = Path(cfg.run.output_dir) / sweep
    _check_same_sweep(sweep_dir, cfg, space, samples)
    parent = parent_run(cfg, sweep, space)
    storage = resolve_storage(cfg.orchestration.storage_path, cfg.run.output_dir)
    trainable = tune.with_parameters(
        wmtp_tune_trial, base=cfg.model_dump(mode="json"), fixed=dict(space.fixed), sweep=sweep,
        parent_run_id=parent.run_id if parent else None, recipe_builder=recipe_builder)
    # The trial function only drives its TorchTrainer, whose workers reserve the CPUs/GPUs; Tune
    # refuses an empty request, so the driver asks for a sliver of a CPU.
    trainable = tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPUS})
    experiment = _join(storage.path, sweep)
    resumed = tune.Tuner.can_restore(experiment, storage_filesystem=storage.filesystem)
    if resumed:
        print(f"[wmtp] resuming sweep {sweep} from {experiment}", flush=True)
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=to_search_space(space), storage_filesystem=storage.filesystem)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=to_search_space(space),
            # The default searcher, seeded (it also enforces max_concurrent_trials).
            tune_config=tune.TuneConfig(num_samples=samples, scheduler=build_scheduler(space),
                                        search_alg=BasicVariantGenerator(
                                            random_state=cfg.run.seed, max_concurrent=space.max_concurrent_trials or 0)),
            run_config=tune.RunConfig(name=sweep, storage_path=storage.path, storage_filesystem=storage.filesystem,
                                      # Tune's status tables and hints only with --verbose; TrialEvents prints
                                      verbose=None if verbose else 0,
                                      callbacks=[trial_status_callback(cfg, sweep), GroupReaper(),
                                                 TrialEvents(space.metric, cfg.train.steps, scheduler_name(space))]),
        )
    try:
        grid = tuner.fit()
        summary = _summarise(grid, sweep, space, parent.run_id if parent else None, cfg)
        summary.resumed = resumed
        if parent is not None:
            parent.log_params({"tune.metric": space.metric, "tune.mode": space.mode,
                               **{f"tune.space.{k}": str(v.model_dump()) for k, v in space.space.items()}})
            if summary.best_value is not None:
                parent.log_metrics({f"best/{space.metric}": summary.best_value}, step=0)
    finally:
        if parent is not None:
            parent.close()
    if summary.best_params is not None:
        summary.best_config = write_best_config(given, space, summary.best_params, sweep_dir / "best.yaml",
                                                inputs=produced_inputs(given, cfg))
    if summary.best_params is None and not summary.interrupted:
        reported = sorted({k for t in summary.trials for k in t.get("metrics", [])})
        raise ConfigError(f"tune space metric {space.metric!r} was never reported by any trial; "
                          f"reported metrics: {', '.join(reported) or 'none'}")
    return summary


class GroupReaper(tune.Callback):
    """Frees the worker groups of trials that Tune ended, while the sweep runs (every
    `REAP_INTERVAL_S`): `remove_orphaned_placement_groups`. Without it a stopped trial's group can
    stay reserved and the next trials wait for its CPUs for ever."""

    def __init__(self, interval_s: float = REAP_INTERVAL_S) -> None:
        self.interval_s, self._last, self.removed = interval_s, 0.0, 0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last < self.interval_s:
            return
        self._last = time.monotonic()
        try:
            removed = remove_orphaned_placement_groups()
        except Exception as exc:  # a private Ray table: never let a change there break a sweep
            log.warning("could not check for placement groups left by stopped trials: %s", exc)
            return
        if removed:
            self.removed += len(removed)
            print(f"[wmtp] freed {len(removed)} placement group(s) left reserved by ended trials", flush=True)


class TrialEvents(tune.Callback):
    """One console line per trial event, like `wmtp train`'s progress lines (Ray Tune's own status
    tables only with `--verbose`): started (with its values), a new value of the tuned metric,
    stopped early by the scheduler, finished, failed."""

    def __init__(self, metric: str, total_steps: int, scheduler: str = "ASHA") -> None:
        self.metric, self.total_steps, self.scheduler = metric, total_steps, scheduler
        self._last: dict[str, float] = {}

    @staticmethod
    def _name(trial: Any) -> str:
        return f"trial {trial.trial_id.rsplit('_', 1)[-1]}"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        values = " ".join(f"{str(k).rsplit('.', 1)[-1]}={_short(v)}" for k, v in (trial.config or {}).items())
        print(f"[tune] {self._name(trial)} started: {values}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if not isinstance(value, int | float) or self._last.get(trial.trial_id) == value:
            return
        self._last[trial.trial_id] = value
        print(f"[tune] {self._name(trial)} step {int(result.get('step', 0) or 0)}/{self.total_steps}: "
              f"{self.metric} {value:.4g}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        step = int(last.get("step", 0) or 0)
        value = self._last.get(trial.trial_id)
        shown = f", {self.metric} {value:.4g}" if value is not None else ""
        if step < self.total_steps:
            print(f"[tune] {self._name(trial)} stopped by {self.scheduler} at iteration "
                  f"{last.get('training_iteration', 0)} (step {step}/{self.total_steps}){shown}", flush=True)
        else:
            print(f"[tune] {self._name(trial)} finished at step {step}/{self.total_steps}{shown}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = str(getattr(trial, "error_msg", None) or "").strip().splitlines()
        print(f"[tune] {self._name(trial)} failed: {reason[-1][:200] if reason else 'see the trial logs'}", flush=True)


def scheduler_name(space: TuneSpace) -> str:
    return "ASHA" if isinstance(space.scheduler, AshaScheduler) else "the scheduler"


def _join(storage_path: str, name: str) -> str:
    return f"{storage_path.rstrip('/')}/{name}"


def produced_inputs(given: WMTPConfig, resolved: WMTPConfig) -> dict[str, str]:
    """The inputs the sweep's first stage produced for its trials (a critic, a reference), as
    dotted key → path relative to the working dir, where they lie below it (relative inputs are
    read from the working dir). `best.yaml` pins them, so training it reuses the sweep's critic
    instead of training one for the `-best` run name; one outside the working dir (a job's
    temporary upload) is left out (docs/CLUSTER.md says what to pass then)."""
    from wmtp.recipes.chain import NEEDS, input_value

    if given.recipe not in NEEDS:
        return {}
    key = NEEDS[given.recipe][0]
    before, after = input_value(given, key), input_value(resolved, key)
    if before is not None or after is None:
        return {}
    try:
        return {key: str(Path(after).resolve().relative_to(Path.cwd()))}
    except ValueError:
        return {}


def write_best_config(given: WMTPConfig, space: TuneSpace, best: Mapping[str, Any], path: Path,
                      inputs: Mapping[str, str] | None = None) -> Path:
    """`given` + the space's fixed values + the best values (+ `inputs`, see `produced_inputs`),
    under run name `<run name>-best`."""
    from wmtp.config.loader import dump_config

    cfg = update_config(given, {**space.fixed, **best, **(inputs or {})}, "tune best trial")
    cfg.run.name = f"{run_name(given)}-best"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(cfg), encoding="utf-8")
    return _display_path(path)


def _display_path(path: Path) -> Path:
    """`path` relative to the cwd when it is below it (what a user types), else as is."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def _check_same_sweep(sweep_dir: Path, cfg: WMTPConfig, space: TuneSpace, samples: int) -> None:
    """Resuming continues the SAME sweep: refuse a rerun whose base config or space changed."""
    record = sweep_dir / "sweep.json"
    identity = {"space": space.model_dump(mode="json"), "num_samples": samples,
                "base": _comparable(cfg.model_dump(mode="json"))}
    if record.exists():
        earlier = json.loads(record.read_text(encoding="utf-8"))
        if earlier != identity:
            changed = sorted(k for k in identity if identity[k] != earlier.get(k))
            raise ConfigError(
                f"sweep {sweep_dir.name} already exists with another {' and '.join(changed)} ({record}); "
                f"rerun the same command to resume it, or set run.name=<new name> for a new sweep")
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(identity, indent=1, sort_keys=True), encoding="utf-8")


def _comparable(tree: dict[str, Any]) -> dict[str, Any]:
    """The config without fields that do not change what a trial computes."""
    tree = json.loads(json.dumps(tree))
    tree["orchestration"].pop("address", None)
    return tree


def _summarise(grid: Any, sweep: str, space: TuneSpace, parent_run_id: str | None,
               base: WMTPConfig | None = None) -> TuneSummary:
    statuses = ([getattr(t, "status", None)
                 for t in getattr(grid, "_experiment_analysis", None).trials]  # type: ignore[union-attr]  # see hasattr
                if hasattr(grid, "_experiment_analysis") else [])
    trials = []
    for i, result in enumerate(grid):
        metrics = result.metrics or {}
        value = metrics.get(space.metric)
        params = {k: v for k, v in (result.config or {}).items()}
        status = statuses[i] if i < len(statuses) else None
        trials.append({
            "trial": metrics.get("trial_id") or _trial_id(result),
            "params": params,
            "value": value if isinstance(value, int | float) and math.isfinite(value) else None,
            "iterations": metrics.get("training_iteration", 0),
            "error": str(result.error) if result.error else None,
            "fate": _fate(result, metrics, status, space, base, params),
            "metrics": sorted(k for k in metrics if "/" in k),
        })
    trials.sort(key=lambda t: t["trial"])  # creation order (a restored grid lists them in another)
    scored = [t for t in trials if t["value"] is not None]
    best = (min if space.mode == "min" else max)(scored, key=lambda t: t["value"]) if scored else None
    return TuneSummary(sweep, space.metric, space.mode, best["params"] if best else None,
                       best["value"] if best else None, trials, parent_run_id,
                       interrupted=any(t["fate"] == FATE_UNFINISHED for t in trials),
                       experiment_path=getattr(grid, "experiment_path", None))


def _trial_id(result: Any) -> str:
    path = getattr(result, "path", None) or ""
    return Path(path).name or "?"


def _fate(result: Any, metrics: Mapping[str, Any], status: str | None, space: TuneSpace,
          base: WMTPConfig | None, params: Mapping[str, Any]) -> str:
    """completed / stopped by ASHA at iteration N / failed / unfinished (interrupted)."""
    if result.error:
        return f"{FATE_FAILED} ({type(result.error).__name__})"
    if status is not None and status not in ("TERMINATED", "ERROR"):
        return FATE_UNFINISHED
    steps = None
    if base is not None:
        try:
            steps = update_config(base, {**space.fixed, **params}, "tune trial").train.steps
        except ConfigError:
            steps = None
    step = metrics.get("step")
    if steps is not None and isinstance(step, int | float) and step < steps:
        return f"stopped by {scheduler_name(space)} at iteration {metrics.get('training_iteration', 0)} (step {int(step)})"
    return FATE_COMPLETED


def parent_run(cfg: WMTPConfig, sweep: str, space: TuneSpace | None) -> Any | None:
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


__all__ = ["run_tune", "to_search_space", "build_scheduler", "TuneSummary"]

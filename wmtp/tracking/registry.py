"""`build_logger`: metric backends picked by name (`tracking.backends` in the config)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wmtp.tracking.base import MetricLogger, MultiLogger, NullLogger


@dataclass(frozen=True)
class LoggerSpec:
    """Everything a backend factory may need; each backend uses what applies to it."""

    run_dir: Path
    run_name: str
    experiment: str
    uri: str | None
    artifact_location: str | None
    parent_run_id: str | None
    total_steps: int | None
    console: MetricLogger | None = None  # what the `stdout` backend is (default: a RunConsole)
    tags: Mapping[str, str] = field(default_factory=dict)  # MLflow run tags


LOGGER_BACKENDS: dict[str, Callable[[LoggerSpec], MetricLogger]] = {}


def register_backend(name: str):
    """Decorator: make a `LoggerSpec -> MetricLogger` factory selectable as `name`."""

    def deco(factory: Callable[[LoggerSpec], MetricLogger]):
        LOGGER_BACKENDS[name] = factory
        return factory

    return deco


@register_backend("stdout")
def _stdout(spec: LoggerSpec) -> MetricLogger:
    if spec.console is not None:
        return spec.console
    from wmtp.tracking.console import RunConsole

    return RunConsole(spec.total_steps, run_name=spec.run_name, run_dir=spec.run_dir)


@register_backend("jsonl")
def _jsonl(spec: LoggerSpec) -> MetricLogger:
    from wmtp.tracking.jsonl import JsonlLogger

    return JsonlLogger(spec.run_dir / "metrics.jsonl")


@register_backend("mlflow")
def _mlflow(spec: LoggerSpec) -> MetricLogger:
    from wmtp.tracking.mlflow_logger import MlflowLogger  # imports mlflow lazily itself

    return MlflowLogger(
        spec.run_dir,
        run_name=spec.run_name,
        experiment=spec.experiment,
        uri=spec.uri,
        artifact_location=spec.artifact_location,
        parent_run_id=spec.parent_run_id,
        tags=dict(spec.tags),
        say=getattr(spec.console, "info", None),  # an outage is told on the run's console (Ray: the driver's)
    )


def build_logger(
    backends: list[str],
    *,
    run_dir: str | Path,
    run_name: str,
    experiment: str = "wmtp",
    uri: str | None = None,
    artifact_location: str | None = None,
    is_main: bool = True,
    parent_run_id: str | None = None,
    total_steps: int | None = None,
    console: MetricLogger | None = None,
    tags: Mapping[str, str] | None = None,
) -> MetricLogger:
    """A `MultiLogger` over `backends` (in order); `NullLogger` on non-main ranks or for `[]`.

    Raises ValueError naming the unknown backend and the allowed ones.
    """
    unknown = [b for b in backends if b not in LOGGER_BACKENDS]
    if unknown:
        raise ValueError(
            f"tracking.backends: unknown backend(s) {unknown}; allowed: {sorted(LOGGER_BACKENDS)}"
        )
    if not is_main or not backends:
        return NullLogger()
    spec = LoggerSpec(Path(run_dir), run_name, experiment, uri, artifact_location, parent_run_id, total_steps,
                      console, dict(tags or {}))
    loggers: list[MetricLogger] = []
    try:
        for name in dict.fromkeys(backends):  # de-duplicate, keep order
            loggers.append(LOGGER_BACKENDS[name](spec))
    except Exception:
        for lg in loggers:
            lg.close()
        raise
    return MultiLogger(loggers)


def end_dead_attempt(run_directory: str | Path, reason: str) -> None:
    """End the tracking run a dead process left open in `run_directory` (MLflow: KILLED with
    `reason`, when still RUNNING), called by a start that took over that process's stale run lock
    (`RunLock.takeover_reason`) before it continues. A tracking failure here is a warning: it
    never stops the rerun."""
    import logging

    from wmtp.tracking.mlflow_logger import RUN_ID_FILE  # mlflow itself stays unimported
    from wmtp.tracking.mlflow_logger import end_dead_attempt as end_mlflow_run

    if not (Path(run_directory) / RUN_ID_FILE).is_file():
        return
    try:
        end_mlflow_run(run_directory, reason)
    except Exception as exc:  # a tracking server down must not block the resume
        logging.getLogger(__name__).warning("could not mark the dead attempt's MLflow run KILLED: %s", exc)


def mlflow_run_id(logger: MetricLogger) -> str | None:
    """The MLflow run id behind `logger` (a MultiLogger is searched), or None without MLflow.

    Tune uses it to hang trial runs under a sweep's parent run (`parent_run_id=`).
    """
    if isinstance(logger, MultiLogger):
        for inner in logger.loggers:
            found = mlflow_run_id(inner)
            if found is not None:
                return found
        return None
    from wmtp.tracking.mlflow_logger import MlflowLogger  # mlflow itself stays unimported

    return logger.run_id if isinstance(logger, MlflowLogger) else None


def build_run_logger(cfg, *, is_main: bool = True, parent_run_id: str | None = None,
                     console: MetricLogger | None = None, brief: bool = False,
                     label: str | None = None) -> MetricLogger:
    """`build_logger` for a resolved `WMTPConfig`: its tracking backends, run name and run dir
    (`<run.output_dir>/<run name>`; MLflow's embedded SQLite store under `run.output_dir`), run
    tags (recipe, preset, model, path, git commit). `console`: what the `stdout` backend is
    (default: a `RunConsole` for this run; `brief`: a producing stage's one-line summary).
    `label`: the MLflow run's name when it should say more than the run name (Tune trials:
    `trial_label`)."""
    from wmtp.config.paths import run_dir, run_name
    from wmtp.tracking.console import RunConsole
    from wmtp.tracking.phases import reset_phases

    reset_phases()  # this process starts a stage: its phase times start from zero
    t = cfg.tracking
    if console is None and "stdout" in t.backends:
        console = RunConsole(cfg.train.steps, run_name=run_name(cfg), run_dir=run_dir(cfg), recipe=cfg.recipe,
                             preset=cfg.run.preset, brief=brief)
    return build_logger(list(t.backends), run_dir=run_dir(cfg), run_name=label or run_title(cfg),
                        experiment=t.experiment,
                        uri=t.uri, artifact_location=t.artifact_location, is_main=is_main,
                        parent_run_id=parent_run_id, total_steps=cfg.train.steps, console=console,
                        tags=run_tags(cfg))


def run_title(cfg) -> str:
    """The MLflow run's name: the run name, which by default is `<recipe>-<preset>`; a custom
    `run.name` that does not say them gets ` (<recipe>, <preset>)` so the runs list still does."""
    from wmtp.config.paths import run_name

    name, preset = run_name(cfg), cfg.run.preset
    missing = [part for part in (cfg.recipe, preset) if part and part not in name]
    return f"{name} ({', '.join(missing)})" if missing else name


def trial_label(trial_id: str, params: Mapping[str, Any]) -> str:
    """A Tune trial's MLflow run name that shows its sampled values first (the UI cuts long names):
    `weight_temperature=0.5 lr=0.0032 #00001` for {"stage2...weight_temperature": 0.5, "optim.lr": ...}."""
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    values = " ".join(f"{str(k).rsplit('.', 1)[-1]}={fmt(v)}" for k, v in params.items())
    return f"{values} #{trial_id.rsplit('_', 1)[-1]}".strip()


def run_tags(cfg) -> dict[str, str]:
    """MLflow tags that make runs read at a glance (and filter in the UI)."""
    tags = {"wmtp.recipe": cfg.recipe, "wmtp.preset": cfg.run.preset or "-", "wmtp.model": cfg.model.preset,
            "wmtp.path": "ray" if cfg.orchestration.enabled else "local",
            # the run page's "Source" row (MLflow shows the git commit beside it, not in the tags)
            "mlflow.source.name": "wmtp", "mlflow.source.type": "LOCAL"}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


GIT_COMMIT_ENV_VAR = "WMTP_GIT_COMMIT"  # set by the driver for its Ray Train workers (launch.py)


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The code's commit: `WMTP_GIT_COMMIT` (a worker, given it by its driver), else HEAD of the git
    checkout at `cwd`, else the `git_commit` a `ray job submit` captured on the submit side into the
    job's metadata (the job's working dir is an upload without `.git`); None when none is known."""
    if os.environ.get(GIT_COMMIT_ENV_VAR):
        return os.environ[GIT_COMMIT_ENV_VAR]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from wmtp.tracking.rerun import GIT_COMMIT_KEY, submitted_job_metadata

    metadata = submitted_job_metadata(dict(os.environ)) or {}
    return metadata.get(GIT_COMMIT_KEY) or None

"""`build_logger`: metric backends picked by name (`tracking.backends` in the config)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


LOGGER_BACKENDS: dict[str, Callable[[LoggerSpec], MetricLogger]] = {}


def register_backend(name: str):
    """Decorator: make a `LoggerSpec -> MetricLogger` factory selectable as `name`."""

    def deco(factory: Callable[[LoggerSpec], MetricLogger]):
        LOGGER_BACKENDS[name] = factory
        return factory

    return deco


@register_backend("stdout")
def _stdout(spec: LoggerSpec) -> MetricLogger:
    from wmtp.tracking.stdout import StdoutLogger

    return StdoutLogger(spec.total_steps, run_name=spec.run_name)


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
    spec = LoggerSpec(Path(run_dir), run_name, experiment, uri, artifact_location, parent_run_id, total_steps)
    loggers: list[MetricLogger] = []
    try:
        for name in dict.fromkeys(backends):  # de-duplicate, keep order
            loggers.append(LOGGER_BACKENDS[name](spec))
    except Exception:
        for lg in loggers:
            lg.close()
        raise
    return MultiLogger(loggers)


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


def build_run_logger(cfg, *, is_main: bool = True, parent_run_id: str | None = None) -> MetricLogger:
    """`build_logger` for a resolved `WMTPConfig`: its tracking backends, run name and run dir
    (`<run.output_dir>/<run name>`; MLflow's embedded SQLite store under `run.output_dir`)."""
    from wmtp.config.paths import run_dir, run_name

    t = cfg.tracking
    return build_logger(list(t.backends), run_dir=run_dir(cfg), run_name=run_name(cfg), experiment=t.experiment,
                        uri=t.uri, artifact_location=t.artifact_location, is_main=is_main,
                        parent_run_id=parent_run_id, total_steps=cfg.train.steps)

"""The one logger interface recipes see, plus fan-out and no-op implementations.

Recipes never know where metrics go: they receive a `MetricLogger` built by
`wmtp.tracking.build_logger` (stdout / jsonl / mlflow fanned out through `MultiLogger`; non-main
ranks get `NullLogger`). Metric values are plain Python floats: turning a tensor into a float is a
host sync, so the caller decides when that happens (every `log_every` steps, not every step).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class MetricLogger(Protocol):
    """Where a run's params, per-step metrics and artifacts go."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Run-level parameters (the flattened resolved config). Secrets are dropped (`redact`)."""
        ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalar metrics at optimizer step `step`."""
        ...

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """A local file or folder, stored under `artifact_path` of the run's artifacts."""
        ...

    def close(self) -> None:
        """Flush and end the run (idempotent)."""
        ...


class NullLogger:
    """Drops everything (non-main ranks, or `backends: []`)."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class MultiLogger:
    """Fans every call out to several loggers, in order.

    `close()` closes all of them even if one fails, then re-raises the first failure.
    """

    def __init__(self, loggers: Iterable[MetricLogger]):
        self.loggers: list[MetricLogger] = list(loggers)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log_metrics(metrics, step)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        for lg in self.loggers:
            lg.log_artifact(local_path, artifact_path)

    def close(self) -> None:
        first: BaseException | None = None
        for lg in self.loggers:
            try:
                lg.close()
            except Exception as exc:  # close the others before reporting
                log.error("closing %s failed: %s", type(lg).__name__, exc)
                first = first or exc
        if first is not None:
            raise first

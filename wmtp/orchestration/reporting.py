"""The recipe's seams inside a Ray Train worker: a metric logger and a checkpoint sink.

Ray Train V2 synchronises every `ray.train.report` call across ranks, so each rank must report the
same number of times. Recipes call `log_metrics` and `checkpoint_sink.save` at the same steps on
every rank; both classes below therefore report on deterministic steps only:
- the logger every `report_every` steps (never every step: a report is a cross-rank barrier);
- the sink at every checkpoint, with the checkpoint attached.
Every report carries the latest value of every metric seen so far (so the checkpoint score
attribute and Tune's metric are present once the first validation has run).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray.train

from wmtp.orchestration.dashboard import DashboardMetrics


class ReportState:
    """Latest value of every metric logged on this rank, shared by the logger and the sink."""

    def __init__(self, score_attribute: str, score_mode: str = "min") -> None:
        self.score_attribute = score_attribute
        # Before the first validation a checkpoint still needs a score: the worst one.
        self._worst = math.inf if score_mode == "min" else -math.inf
        self.latest: dict[str, float] = {}
        self.last_reported_step: int | None = None

    def update(self, metrics: Mapping[str, Any], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.latest[key] = float(value)
        self.latest["step"] = float(step)

    def payload(self, step: int) -> dict[str, float]:
        """What one report carries (the score attribute is the worst value before validation)."""
        out = dict(self.latest)
        out["step"] = step
        out.setdefault(self.score_attribute, self._worst)
        return out


class RayMetricLogger:
    """MetricLogger for a Ray Train worker.

    Rank 0 forwards to the real tracking backends (`inner`); every rank updates its dashboard gauges
    and calls `ray.train.report` on steps divisible by `report_every`.
    """

    def __init__(
        self,
        inner: Any | None,
        state: ReportState,
        *,
        report_every: int,
        dashboard: DashboardMetrics | None = None,
    ) -> None:
        self._inner = inner
        self._state = state
        self._report_every = report_every
        self._dashboard = dashboard

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self._inner is not None:
            self._inner.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._state.update(metrics, step)
        if self._inner is not None:
            self._inner.log_metrics(metrics, step)
        if self._dashboard is not None:
            self._dashboard.record(metrics, step)
        # One report per reporting step even when train and eval metrics arrive separately.
        if step % self._report_every == 0 and self._state.last_reported_step != step:
            self._state.last_reported_step = step
            ray.train.report(self._state.payload(step))

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        if self._inner is not None:
            self._inner.log_artifact(local_path, artifact_path)

    @property
    def inner(self) -> Any | None:
        """Rank 0's real backends (`wmtp.tracking.registry.end_run` closes them with a status)."""
        return self._inner

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


class RayCheckpointSink:
    """CheckpointSink publishing through `ray.train.report(checkpoint=...)`.

    `save`: every rank writes its files (DCP shards) into a fresh local directory; Ray uploads the
    directories of all ranks into one storage folder `checkpoint_step<step>` (file names must be
    rank-unique, or identical across ranks). `latest`: the run's latest checkpoint (after a worker
    restart or a rerun with the same name and storage), materialised into a local directory.
    """

    def __init__(self, state: ReportState, *, scratch_dir: str | None = None) -> None:
        self._state = state
        self._scratch_dir = scratch_dir
        self._restored: Path | None = None

    def latest(self) -> Path | None:
        if self._restored is None:
            checkpoint = ray.train.get_checkpoint()
            if checkpoint is None:
                return None
            target = tempfile.mkdtemp(prefix="wmtp-restore-", dir=self._scratch_dir)
            self._restored = Path(checkpoint.to_directory(target))
        return self._restored

    def save(self, step: int, write: Callable[[Path], None], metrics: Mapping[str, float]) -> None:
        self._state.update(metrics, step)
        local = Path(tempfile.mkdtemp(prefix=f"wmtp-ckpt-{step}-", dir=self._scratch_dir))
        try:
            write(local)
            self._state.last_reported_step = step
            ray.train.report(
                self._state.payload(step),
                checkpoint=ray.train.Checkpoint.from_directory(str(local)),
                checkpoint_dir_name=f"checkpoint_step{step:08d}",
            )
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def close(self) -> None:
        if self._restored is not None:
            shutil.rmtree(self._restored, ignore_errors=True)
            self._restored = None

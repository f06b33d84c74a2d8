"""The recipe's seams inside a Ray Train worker: a metric logger and a checkpoint sink.

Ray Train V2 synchronises every `ray.train.report` call across ranks, so each rank must report the
same number of times. Recipes call `log_metrics` and `checkpoint_sink.save` at the same steps on
every rank; both classes below therefore report on deterministic steps only:
- the logger every `report_every` steps (never every step: a report is a cross-rank barrier);
- the sink at every checkpoint, with the checkpoint attached.
Every report carries the latest value of every metric seen so far (so the checkpoint score
attribute and Tune's metric are present once the first validation has run).

The score attached to a checkpoint is always a finite number: Ray's controller saves its
checkpoint list as JSON (pydantic), where inf/nan become `null`, and a controller restored from
that list (a rerun after the driver died) cannot rank a `null` score. Before validation, and
when validation gave a non-finite value, the score is the worst finite float.
"""

from __future__ import annotations

import fcntl
import math
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ray.train

from wmtp.orchestration.dashboard import DashboardMetrics


class ReportState:
    """Latest value of every metric logged on this rank, shared by the logger and the sink."""

    def __init__(self, score_attribute: str, score_mode: str = "min") -> None:
        self.score_attribute = score_attribute
        # Before the first validation a checkpoint still needs a score: the worst finite one.
        self._worst = worst_score(score_mode)
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
        if not math.isfinite(out.get(self.score_attribute, math.nan)):
            out[self.score_attribute] = self._worst
        return out


def worst_score(mode: str) -> float:
    """The worst finite score for `mode` ("min": largest float; "max": most negative)."""
    return sys.float_info.max if mode == "min" else -sys.float_info.max


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
    rank-unique, or identical across ranks). `candidates`: the run's latest checkpoint (after a
    worker restart or a rerun with the same name and storage) and the older ones kept beside it,
    newest first. On a local or shared (NFS) storage path they are the storage folders themselves:
    DCP reads each rank's shards straight from there, nothing is copied. On remote storage (S3)
    a checkpoint is downloaded once per node, into a folder its ranks share.
    """

    def __init__(self, state: ReportState, *, scratch_dir: str | None = None, keep_dir: str | Path | None = None,
                 on_saved: Callable[[str], None] | None = None) -> None:
        self._state = state
        self._scratch_dir = scratch_dir
        # Where a checkpoint that could not be uploaded is kept (this node); `on_saved(dir name)`:
        # told after each upload (rank 0 tells the driver, whose summary names it).
        self._keep_dir = Path(keep_dir) if keep_dir is not None else Path(tempfile.gettempdir()) / "wmtp-not-uploaded"
        self._on_saved = on_saved
        self._chosen: Path | None = None
        self._downloads: list[Path] = []

    def candidates(self) -> Iterator[Path]:
        """Local folders of the run's checkpoints, newest first (each materialised when reached)."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            for older in _newest_first(checkpoint):
                yield self._materialise(older)

    def resume_from(self, path: Path) -> None:
        self._chosen = path

    def latest(self) -> Path | None:
        if self._chosen is None:
            self._chosen = next(iter(self.candidates()), None)
        return self._chosen

    def _materialise(self, checkpoint: ray.train.Checkpoint) -> Path:
        """A local folder holding `checkpoint`: its own path on a local filesystem, else one
        download per node (the first rank to take the lock downloads, the others reuse it)."""
        import pyarrow.fs

        if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem) and Path(checkpoint.path).is_dir():
            return Path(checkpoint.path)
        context = ray.train.get_context()
        root = Path(self._scratch_dir or tempfile.gettempdir()) / "wmtp-restore" / context.get_experiment_name()
        target = root / Path(checkpoint.path).name
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f".{target.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # ranks of this node wait for the one downloading
            if not (root / f".{target.name}.complete").is_file():
                shutil.rmtree(target, ignore_errors=True)
                checkpoint.to_directory(str(target))
                (root / f".{target.name}.complete").touch()
        self._downloads.append(target)
        return target

    def save(self, step: int, write: Callable[[Path], None], metrics: Mapping[str, float]) -> None:
        self._state.update(metrics, step)
        local = Path(tempfile.mkdtemp(prefix=f"wmtp-ckpt-{step}-", dir=self._scratch_dir))
        name = f"checkpoint_step{step:08d}"
        try:
            write(local)
            self._state.last_reported_step = step
            ray.train.report(
                self._state.payload(step),
                checkpoint=ray.train.Checkpoint.from_directory(str(local)),
                checkpoint_dir_name=name,
                checkpoint_upload_fn=lambda checkpoint, dir_name: upload_with_retries(
                    checkpoint, dir_name, local, self._keep_dir),
            )
        finally:
            shutil.rmtree(local, ignore_errors=True)
        if self._on_saved is not None:
            self._on_saved(name)

    def close(self) -> None:
        for target in self._downloads:
            shutil.rmtree(target, ignore_errors=True)
            (target.parent / f".{target.name}.complete").unlink(missing_ok=True)
        self._downloads.clear()
        self._chosen = None


# Waits between tries of a checkpoint upload that cannot reach the storage (then it is kept locally).
UPLOAD_RETRY_S = (2.0, 5.0, 10.0, 20.0)


def upload_with_retries(checkpoint: ray.train.Checkpoint, dir_name: str, local: Path, keep_dir: Path,
                        waits: tuple[float, ...] = UPLOAD_RETRY_S) -> ray.train.Checkpoint:
    """Ray Train's own upload of `checkpoint` (its `checkpoint_upload_fn`), tried again with backoff
    while the storage cannot be reached. When it never could: this rank's files are copied to
    `keep_dir/<dir_name>` and a `StorageError` names both (the run ends FAILED, exit 2; the last
    uploaded checkpoint stays the one a rerun resumes from)."""
    import time

    from ray.train.v2._internal.execution.context import get_train_context

    from wmtp.storage.errors import StorageError
    from wmtp.tracking.outage import is_unreachable

    storage = get_train_context().storage_context
    fs = storage.storage_filesystem
    where = f"{'s3://' if getattr(fs, 'type_name', '') == 's3' else ''}{storage.experiment_fs_path}"
    for attempt, wait in enumerate((*waits, None), start=1):
        try:
            return storage.persist_current_checkpoint(checkpoint, dir_name)
        except Exception as exc:
            if wait is not None and is_unreachable(exc):
                print(f"[wmtp] upload of {dir_name} to {where} failed ({type(exc).__name__}: "
                      f"{str(exc).strip()[:200]}); try {attempt + 1} in {wait:.0f} s", file=sys.stderr, flush=True)
                time.sleep(wait)
                continue
            kept = keep_dir / dir_name
            shutil.copytree(local, kept, dirs_exist_ok=True)
            raise StorageError(
                f"checkpoint {dir_name} could not be uploaded to {where} after {attempt} tries "
                f"({type(exc).__name__}: {str(exc).strip()[:300]}); this rank's files are kept at {kept}. "
                "Rerun the same command once the storage answers: it resumes from the last uploaded checkpoint."
            ) from exc
    raise AssertionError("unreachable")


def checkpoint_dir_step(path: str) -> int:
    """The step of a `checkpoint_step<step>` storage folder (0 for another name)."""
    base = str(path).rstrip("/").rsplit("/", 1)[-1]
    digits = base.removeprefix("checkpoint_step")
    return int(digits) if digits.isdigit() else 0


def _newest_first(latest: ray.train.Checkpoint) -> list[ray.train.Checkpoint]:
    """`latest` and the older `checkpoint_step*` folders beside it in the run's storage, newest first."""
    import pyarrow.fs

    fs = latest.filesystem or pyarrow.fs.LocalFileSystem()
    parent, name = latest.path.rstrip("/").rsplit("/", 1)
    older = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(parent)):
        base = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pyarrow.fs.FileType.Directory and base.startswith("checkpoint_step") and base < name:
            older.append(ray.train.Checkpoint(info.path, filesystem=fs))
    return [latest, *sorted(older, key=lambda c: c.path, reverse=True)]


SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def repair_checkpoint_snapshot(storage: Any, name: str, score_attribute: str, score_mode: str) -> bool:
    """Give every checkpoint in the run's saved checkpoint list a finite score (True if changed).

    Runs saved before scores were kept finite hold `null` scores there (inf/nan in JSON), which a
    restored controller cannot rank (`float * None`); this makes such runs resumable again.
    `storage`: a `TrainStorage` (path + optional pyarrow filesystem).
    """
    import json

    import pyarrow.fs

    fs, root = storage.filesystem, storage.path
    if fs is None:
        fs, root = pyarrow.fs.FileSystem.from_uri(root) if "://" in root else (pyarrow.fs.LocalFileSystem(), root)
    path = f"{root.rstrip('/')}/{name}/{SNAPSHOT_FILE}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return False
    with fs.open_input_stream(path) as fh:
        snapshot = json.loads(fh.read().decode("utf-8"))
    worst = worst_score(score_mode)
    changed = False

    def fix(node: Any) -> None:
        nonlocal changed
        if isinstance(node, dict):
            metrics = node.get("metrics")
            if "checkpoint_dir_name" in node and isinstance(metrics, dict):
                value = metrics.get(score_attribute)
                if not isinstance(value, int | float) or not math.isfinite(value):
                    metrics[score_attribute] = worst
                    changed = True
            for child in node.values():
                fix(child)
        elif isinstance(node, list):
            for child in node:
                fix(child)

    fix(snapshot)
    if changed:
        with fs.open_output_stream(path) as fh:
            fh.write(json.dumps(snapshot).encode("utf-8"))
    return changed


def user_error_of(error: BaseException) -> BaseException | None:
    """The user error (bad config, damaged checkpoint, ...) a worker failed with, if any: the CLI
    then prints it in one line and exits 2 instead of showing Ray's wrapped traceback."""
    from wmtp.errors import is_user_error

    pending: list[Any] = [error, *getattr(error, "worker_failures", {}).values()]
    seen: set[int] = set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, BaseException) and exc is not error and is_user_error(exc):
            return exc
        pending += [getattr(exc, "_base_exc", None), getattr(exc, "cause", None),
                    getattr(exc, "__cause__", None), getattr(exc, "controller_failure", None)]
    return None

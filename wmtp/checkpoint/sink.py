"""The local `CheckpointSink`: `<run_dir>/checkpoints/step_NNNNNN`, published atomically.

What a checkpoint holds is the recipe's (`wmtp.training.state.LoopState.write`: DCP shards plus
per-rank extra state, `wmtp.checkpoint.dcp`); the sink gives it a fresh directory, then
publishes it. Atomicity: the checkpoint is written into a hidden temporary sibling directory and
renamed into place, and the `latest` marker is rewritten only after that rename. A run killed at
any moment (SIGKILL) leaves the previously marked checkpoint intact and still `latest`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from wmtp.checkpoint.dcp import barrier, rank

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, directory: Path) -> None:
    """Rename `tmp` to `directory` (replacing an empty or older one) and sync the parent."""
    old = None
    if directory.exists():
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
        else:
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            os.rename(directory, old)
    os.rename(tmp, directory)
    _fsync_dir(directory.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_step(path: str | Path) -> int:
    """Step number of a `step_000050` directory."""
    match = _STEP_DIR.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a step_NNNNNN checkpoint directory")
    return int(match.group(1))


class LocalCheckpointSink:
    """`CheckpointSink` on local disk: `<run_dir>/checkpoints/step_000050`, newest `keep` kept.

    `latest` (a text file naming the checkpoint) is rewritten last, atomically, after the
    checkpoint directory is complete; `latest()` follows it.
    """

    def __init__(self, run_dir: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(run_dir) / "checkpoints"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        # Leftovers of a save that was killed half-way: never valid, safe to drop (one process).
        for entry in self.root.iterdir():
            if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def _complete(self) -> list[Path]:
        dirs = [p for p in self.root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
        return sorted(dirs, key=checkpoint_step)

    def latest(self) -> Path | None:
        marker = self.root / LATEST
        if marker.exists():
            target = self.root / marker.read_text().strip()
            if target.is_dir():
                return target
            log.warning("%s names %s, which is gone: using the newest complete checkpoint", marker, target)
        complete = self._complete()
        # Without a usable marker any step_* directory is complete (it only appears by rename).
        return complete[-1] if complete else None

    def candidates(self) -> list[Path]:
        """Checkpoints to resume from, newest first.

        A `step_*` folder only appears by rename once its save is complete, so one newer than the
        `latest` marker is a run killed between the rename and the marker's rewrite: it is tried
        first (verification still decides), then the marked latest, then the older ones.
        """
        latest = self.latest()
        if latest is None:
            return []
        newer = [p for p in self._complete() if checkpoint_step(p) > checkpoint_step(latest)]
        older = [p for p in self._complete() if checkpoint_step(p) < checkpoint_step(latest)]
        return [*reversed(newer), latest, *reversed(older)]

    def resume_from(self, path: Path) -> None:
        """Resume from `path` (chosen after the newer ones failed verification): the newer ones
        are moved aside as `.damaged-step_NNNNNN` (kept for inspection) and `path` is marked latest."""
        if rank() == 0:
            for newer in self._complete():
                if checkpoint_step(newer) > checkpoint_step(path):
                    aside = self.root / f".damaged-{newer.name}"
                    shutil.rmtree(aside, ignore_errors=True)
                    os.rename(newer, aside)
                    log.warning("moved the damaged checkpoint %s aside to %s", newer, aside)
            if path != self.latest():
                self._mark(path.name)
        barrier()

    def save(self, step: int, write: Callable[[Path], None], metrics: Mapping[str, float]) -> None:
        name = f"step_{step:06d}"
        tmp = self.root / f".{name}.tmp-{os.getpid()}-sink"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write(tmp)
        (tmp / "metrics.json").write_text(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}))
        _publish(tmp, self.root / name)
        self._mark(name)
        self._prune()

    def _mark(self, name: str) -> None:
        tmp = self.root / f".{LATEST}.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.write(name + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / LATEST)
        _fsync_dir(self.root)

    def _prune(self) -> None:
        latest = self.latest()
        complete = self._complete()
        keep = set(complete[-self.keep:]) | ({latest} if latest else set())
        for path in complete:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)

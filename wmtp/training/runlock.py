"""One run per run directory at a time: `<run_dir>/run.lock`.

    lock = hold_run_lock(run_dir(cfg))
    try: ...train...
    finally: lock.release()

The lock file holds the holder's host, pid, process start time and when it started. A second
start while the holder lives gets `RunLocked` (exit 2, naming the holder). A lock whose process is
gone (killed by SIGKILL, the machine rebooted) is stale: the next start takes it over with a
warning, and `RunLock.takeover_reason` says so ("driver died: stale lock of pid N taken over"):
the caller ends that attempt's tracking run with it (MLflow: KILLED, `end_dead_attempt`), since
the dead process could not. A holder on another host cannot be checked from here: the error says
which file to delete once that run is known to be dead.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from pathlib import Path

from wmtp.errors import WMTPUserError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunLocked(WMTPUserError, RuntimeError):
    """The run directory is held by a live run (names the holder and the lock file)."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"  # alive, start time unknown (no /proc)
    return stat.rsplit(")", 1)[1].split()[19]


def _holder_alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell from here
    start = _process_start(int(holder.get("pid", -1)))
    if start is None:
        return False
    # A recycled pid belongs to a process that started at another time.
    return start == "?" or holder.get("pid_start") in (None, start)


def _describe(holder: dict, path: Path) -> str:
    return (f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')} "
            f"(lock file {path})")


def acquire(run_directory: str | Path) -> Path:
    """Take the lock of `run_directory` (created if needed); returns the lock file."""
    return _take(run_directory)[0]


def _take(run_directory: str | Path) -> tuple[Path, dict | None]:
    """(lock file, the dead holder whose stale lock this call took over, or None)."""
    path = Path(run_directory) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    dead: dict | None = None
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            if holder and holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                return path, None  # this process holds it already (a stage run inside a run)
            if holder and _holder_alive(holder):
                raise RunLocked(f"run {Path(run_directory).name!r} is already running: held by "
                                f"{_describe(holder, path)}; wait for it to finish, pick another "
                                f"run.name, or delete the lock file if that run is gone") from None
            # Stale: move it aside atomically (only one of two racing starters wins), then retry.
            aside = path.with_name(f".{LOCK_FILE}.stale-{os.getpid()}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            dead = holder
            log.warning("taking over the stale lock of run %r: %s is gone", Path(run_directory).name,
                        _describe(holder, path) if holder else f"an unreadable {path}")
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({**me, "took_over": dead} if dead is not None else me, fh)
        return path, dead
    raise RunLocked(f"could not take the lock {path}: another start keeps taking it")


def release(path: Path) -> None:
    """Remove the lock if this process still holds it."""
    if _held_by_me(path):
        path.unlink(missing_ok=True)


def _held_by_me(path: Path) -> bool:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


class RunLock:
    """A held run lock; `release()` is idempotent and also runs at interpreter exit. `took_over`:
    the dead holder (host, pid, start) whose stale lock this start took over, else None."""

    def __init__(self, path: Path, owned: bool, took_over: dict | None = None) -> None:
        self.path, self._owned, self.took_over = path, owned, took_over
        if owned:
            atexit.register(self.release)

    @property
    def takeover_reason(self) -> str | None:
        """Why the previous attempt ended, for its tracking run: None unless a stale lock was taken over."""
        if self.took_over is None:
            return None
        holder = self.took_over
        if not holder:
            return f"driver died: an unreadable stale lock {self.path} taken over by pid {os.getpid()}"
        return (f"driver died: stale lock of pid {holder.get('pid')} taken over (host {holder.get('host')}, "
                f"started {holder.get('started')}; taken over by pid {os.getpid()})")

    def release(self) -> None:
        if self._owned:
            self._owned = False
            release(self.path)


def hold_run_lock(run_directory: str | Path) -> RunLock:
    """Take the lock of `run_directory` until `.release()`; a holder taking it again (a stage run
    inside its run, a retried call in one process) gets a no-op handle."""
    path = Path(run_directory) / LOCK_FILE
    held_before = _held_by_me(path)
    path, dead = _take(run_directory)
    return RunLock(path, owned=not held_before, took_over=dead)


__all__ = ["LOCK_FILE", "RunLock", "RunLocked", "acquire", "hold_run_lock", "release"]

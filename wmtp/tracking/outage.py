"""A tracking server that goes away mid-run: training goes on, MLflow catches up later.

`TrackingOutage` sits between `MlflowLogger` and its client. A call that fails because the server
cannot be reached (connection refused or reset, timeout, 502/503/504) does not end the run: the
call is kept in order (metrics, params, tags, artifacts; the `jsonl` backend already has every
metric on disk), the run says so once, and the kept calls are replayed, in order, at the next
call after `retry_s` seconds, and once more at the end (`flush(final=True)`, with a few short
retries), before the run's status is set. A call that fails for another reason still raises.

MLflow's own HTTP retries (7, exponential backoff: minutes per call against a dead server) are
cut to 2 quick ones for wmtp's runs, unless `MLFLOW_HTTP_REQUEST_MAX_RETRIES` /
`MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR` / `MLFLOW_HTTP_REQUEST_TIMEOUT` are set.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# seconds between tries while the server is away (`WMTP_TRACKING_RETRY_S` overrides)
RETRY_S = 30.0
FINAL_TRIES_S = (1.0, 3.0, 6.0)
_UNREACHABLE = ("connection refused", "max retries exceeded", "failed to establish a new connection",
                "connection aborted", "connection reset", "read timed out", "timed out",
                "remote end closed connection", "name or service not known", "endpointconnectionerror",
                "could not connect to the endpoint", "502", "503", "504", "bad gateway",
                "service unavailable", "gateway timeout")


def quick_http_retries() -> None:
    """Short MLflow HTTP retries for a run (the user's own settings win)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def is_unreachable(exc: BaseException | None) -> bool:
    """True when `exc` (or what caused it) says the server or artifact store could not be reached."""
    seen = 0
    while exc is not None and seen < 8:
        name = type(exc).__name__.lower()
        if "connectionerror" in name or "timeout" in name or "endpointconnection" in name:
            return True
        text = str(exc).lower()
        if any(marker in text for marker in _UNREACHABLE):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class TrackingOutage:
    """Calls to a tracking server that may be away; see the module docstring.

    where: the server, as shown to the user (redacted). kept_in: where the metrics are on disk.
    say: how the run tells its user (the run's console, also the Ray driver's); default a warning.
    """

    def __init__(self, where: str, kept_in: str, *, retry_s: float | None = None, say: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.where, self.kept_in = where, kept_in
        self.say = say or log.warning
        self.retry_s = float(os.environ.get("WMTP_TRACKING_RETRY_S", RETRY_S)) if retry_s is None else retry_s
        self._clock, self._sleep = clock, sleep
        self.pending: list[tuple[str, Callable[[], Any]]] = []
        self.down_since: float | None = None
        self._next_try = 0.0
        self.outages = 0
        self.replayed = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def call(self, what: str, fn: Callable[[], Any]) -> None:
        """Run `fn` now (after any kept calls), or keep it while the server is away."""
        self.pending.append((what, fn))
        if self.down and self._clock() < self._next_try:
            return
        self._drain()

    def flush(self, *, final: bool = False) -> bool:
        """Replay what was kept; `final`: a few short retries first (the run is ending). True when
        nothing is left."""
        tries = (0.0, *FINAL_TRIES_S) if final else (0.0,)
        for wait in tries:
            if not self.pending:
                return True
            if wait:
                self._sleep(wait)
            self._drain()
        if self.pending and final:
            # Files that did not reach the artifact store stay where they are; the rest (metrics,
            # tags, then the run's status) is tried once more without them: the store may be
            # away while the tracking server answers.
            files = [what for what, _ in self.pending if what.startswith("artifact ")]
            if files:
                self.say("MLflow artifact store unreachable at the end: not uploaded (kept on disk): "
                         + ", ".join(w.removeprefix("artifact ") for w in files))
                self.pending = [(w, fn) for w, fn in self.pending if not w.startswith("artifact ")]
                self._drain()
            if self.pending:
                self.say(f"MLflow at {self.where} still unreachable at the end: {len(self.pending)} calls not sent "
                         f"(metrics are in {self.kept_in})")
        return not self.pending

    def _drain(self) -> None:
        while self.pending:
            what, fn = self.pending[0]
            try:
                fn()
            except Exception as exc:
                if not is_unreachable(exc):
                    self.pending.pop(0)
                    raise
                self._went_down(what, exc)
                return
            self.pending.pop(0)
            if self.down:
                self.replayed += 1
        if self.down:
            self.say(f"MLflow at {self.where} answers again after {self._clock() - (self.down_since or 0.0):.0f} s: "
                     f"{self.replayed} kept calls sent")
            self.down_since = None

    def _went_down(self, what: str, exc: BaseException) -> None:
        now = self._clock()
        self._next_try = now + self.retry_s
        if self.down:
            return
        self.down_since = now
        self.outages += 1
        self.replayed = 0
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if self.outages == 1:  # said once per run; later outages go to the debug log
            self.say(f"MLflow at {self.where} is unreachable ({what}: {first}): training continues; metrics are "
                     f"kept in {self.kept_in} and sent when it answers (tried every {self.retry_s:.0f} s, and at the end)")
        else:
            log.debug("MLflow at %s unreachable again (%s: %s)", self.where, what, first)

"""The run's console, the cluster layer; the same concept as wmtp.tracking.console, relayed over Ray.

The driver's console on Ray: rank 0 forwards its console calls to the driver, which renders them.

    relay = DriverConsole.start(console)      # driver: an actor plus a polling thread
    ForwardingConsole(relay.handle)            # rank 0: the `stdout` backend of its logger
    relay.stop()                               # driver, after fit(): the last events are drained

Workers' own stdout (Ray Train's per-report echo, both ranks' log lines, the controller's notices)
is not streamed to the driver unless `--verbose` (`ensure_ray(log_to_driver=...)`); it stays in the
Ray session logs (`/tmp/ray/session_latest/logs/worker-*.out`) and the run folder's files.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray

from wmtp.tracking.console import RunConsole
from wmtp.tracking.phases import phase_seconds

log = logging.getLogger(__name__)

POLL_S = 0.25


@ray.remote(num_cpus=0)
class ConsoleRelay:
    """A mailbox: rank 0 pushes console events, the driver drains them."""

    def __init__(self) -> None:
        self._events: list[tuple] = []

    def push(self, event: tuple) -> None:
        self._events.append((time.time(), *event))

    def drain(self) -> list[tuple]:
        out, self._events = self._events, []
        return out


class ForwardingConsole:
    """Rank 0's `stdout` backend on Ray: every call goes to the driver's `RunConsole`."""

    def __init__(self, relay: Any) -> None:
        self._relay = relay
        self._ended = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._relay.push.remote(("metrics", int(step), {k: float(v) for k, v in metrics.items()}))

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def mark(self, name: str) -> None:
        """A point in time the driver turns into a phase boundary (e.g. `setup_start`)."""
        self._relay.push.remote(("mark", name))

    def resumed(self, step: int, where: str) -> None:
        """The run continues from the checkpoint of `step` at `where` (the driver says so)."""
        self._relay.push.remote(("resumed", int(step), str(where)))

    def info(self, line: str) -> None:
        """A line for the run's console (e.g. the tracking server is unreachable)."""
        self._relay.push.remote(("info", str(line)))

    def saved(self, dir_name: str) -> None:
        """The checkpoint folder `dir_name` is in the run's storage (the summary names the newest)."""
        self._relay.push.remote(("saved", str(dir_name)))

    def end(self, status: str, reason: str | None = None) -> None:
        if not self._ended:
            self._ended = True
            # Waited for: the worker may exit right after.
            ray.get(self._relay.push.remote(("end", status, reason, phase_seconds())))

    def close(self) -> None:
        self.end("FINISHED")


class DriverConsole:
    """Feeds a driver-side `RunConsole` from the relay until `stop()`."""

    def __init__(self, console: RunConsole, remote_root: str | None = None) -> None:
        self.console = console
        self.remote_root = remote_root
        self.handle = ConsoleRelay.remote()  # type: ignore[attr-defined]  # a Ray actor class
        self.marks: dict[str, float] = {}
        self.worker_end: tuple[str, str | None] | None = None
        self.ended_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="wmtp-console", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._drain()
            self._stop.wait(POLL_S)

    def _drain(self) -> None:
        try:
            events = ray.get(self.handle.drain.remote(), timeout=30)
        except Exception as exc:  # the relay is gone (cluster down): nothing more to show
            log.debug("console relay: %s", exc)
            return
        for event in events:
            at, kind, *rest = event
            if kind == "metrics":
                self.console.log_metrics(rest[1], rest[0])
            elif kind == "resumed":
                self.console.resumed(rest[0], rest[1])
                if self.remote_root is not None and self.console.remote_checkpoint is None:
                    self.console.remote_checkpoint = f"{self.remote_root}/{str(rest[1]).rstrip('/').rsplit('/', 1)[-1]}"
            elif kind == "info":
                self.console.info(rest[0])
            elif kind == "saved":
                if self.remote_root is not None:
                    self.console.remote_checkpoint = f"{self.remote_root}/{rest[0]}"
            elif kind == "mark":
                self.marks.setdefault(rest[0], at)
            elif kind == "end":
                status, reason, phases = rest
                self.worker_end = (status, reason)
                self.ended_at = at
                self.console.add_phases(phases)

    def stop(self) -> None:
        """Stop polling after one last drain (call once fit() has returned or raised)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()
        try:
            ray.kill(self.handle)
        except Exception:
            pass


def fit_with_console(cfg: Any, make_trainer: Any, *, brief: bool = False, cluster_start_s: float = 0.0,
                     checkpoint_root: Path | None = None, remote_root: str | None = None) -> Any:
    """`make_trainer(console_handle).fit()` with the driver's progress line and summary block.

    The summary (also `<run_dir>/summary.json`) and the MLflow run's final status are the
    driver's: it alone sees how the run ended (finished, a worker or the controller failed,
    Ctrl-C, SIGTERM from `ray job stop`). Returns fit()'s result; re-raises its error.
    """
    from wmtp.config.paths import run_dir, run_name
    from wmtp.tracking.console import report_failure, status_of

    t0 = time.monotonic()
    fit_start = time.time()
    roots = [checkpoint_root] if checkpoint_root is not None else []
    console = RunConsole(cfg.train.steps, run_name=run_name(cfg), run_dir=run_dir(cfg), recipe=cfg.recipe,
                         preset=cfg.run.preset, checkpoint_roots=roots, brief=brief)
    if "stdout" not in cfg.tracking.backends:
        console.stream = open(os.devnull, "w")  # noqa: SIM115 - the summary file is still written
    if cluster_start_s >= 0.05:
        console.add_phases({"cluster_start": cluster_start_s})
    driver = DriverConsole(console, remote_root)
    error: BaseException | None = None
    if "mlflow" in cfg.tracking.backends:  # the end records the status: no import then (SIGTERM allows ~3 s)
        from wmtp.tracking.mlflow_logger import preload_client

        threading.Thread(target=preload_client, name="wmtp-import", daemon=True).start()
    try:
        return fit_stoppably(make_trainer(driver.handle).fit)
    except BaseException as exc:
        error = exc
        report_failure(exc)
        raise
    finally:
        driver.stop()
        fit_end = time.time()
        if "setup_start" in driver.marks:
            console.add_phases({"worker_start": driver.marks["setup_start"] - fit_start})
        if driver.ended_at is not None:
            console.add_phases({"shutdown": max(0.0, fit_end - driver.ended_at)})
        status, reason = status_of(error)
        if error is None and driver.worker_end is not None and driver.worker_end[0] != "FINISHED":
            status, reason = driver.worker_end
        summary = console.finish(status, reason, wall_s=time.monotonic() - t0 + cluster_start_s)
        if "mlflow" in cfg.tracking.backends:
            try:
                from wmtp.tracking.mlflow_logger import finalize_recorded_run

                finalize_recorded_run(run_dir(cfg), status, reason, summary["paths"]["summary"])
            except Exception as exc:  # never hide the run's own outcome behind a tracking error
                log.warning("could not record the MLflow status %s: %s", status, exc)


# SIGTERM (`ray job stop`, `kill`) and SIGINT (Ctrl-C) of the driver: how the run's end names them.
STOP_REASONS = {signal.SIGTERM: "stopped by SIGTERM (e.g. ray job stop)", signal.SIGINT: "interrupted by SIGINT (Ctrl-C)"}


def _raise_stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(STOP_REASONS[signal.Signals(signum)])


def fit_stoppably(fit: Any) -> Any:
    """`fit()` in a thread while the main thread waits with wmtp's SIGTERM / SIGINT handlers, which
    raise KeyboardInterrupt there: the run ends KILLED with the signal named, its summary and the
    resume command printed. Ray's own handlers stay out: `ray.init`'s SIGTERM one calls
    `sys.exit(15)`, and Ray Train's SIGINT one (installed by fit() on the main thread only) aborts
    the controller and exits 0, both seen as FAILED. The workers end with the driver's job
    (a stopped run resumes from its last checkpoint). Off the main thread (Tune): fit() as is."""
    if threading.current_thread() is not threading.main_thread():
        return fit()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fit()
        except BaseException as exc:
            box["error"] = exc

    previous = {sig: signal.signal(sig, _raise_stop) for sig in STOP_REASONS}
    try:
        thread = threading.Thread(target=run, name="wmtp-fit", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "error" in box:
        raise box["error"]
    return box["result"]


def trial_status_callback(cfg: Any, sweep: str) -> Any:
    """A Tune callback (`TrialStatusCallback`; ray.tune is imported only when a sweep runs)."""
    from ray.tune import Callback

    class TrialStatusCallback(_TrialStatus, Callback):
        pass

    return TrialStatusCallback(cfg, sweep)


class _TrialStatus:
    """Tune trials' MLflow runs end FINISHED, KILLED (stopped early by the scheduler, e.g. ASHA)
    or FAILED (with Tune's error), instead of staying RUNNING: a stopped trial's workers are
    killed before they can say so themselves."""

    def __init__(self, cfg: Any, sweep: str) -> None:
        self.output_dir = Path(cfg.run.output_dir)
        self.sweep = sweep
        self.total_steps = cfg.train.steps
        self.tracked = "mlflow" in cfg.tracking.backends

    def _finalize(self, trial: Any, status: str, reason: str | None) -> None:
        if not self.tracked:
            return
        try:
            from wmtp.tracking.mlflow_logger import finalize_recorded_run

            finalize_recorded_run(self.output_dir / f"{self.sweep}-{trial.trial_id}", status, reason)
        except Exception as exc:
            log.warning("trial %s: could not record MLflow status %s: %s", trial.trial_id, status, exc)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        step = int((trial.last_result or {}).get("step", 0) or 0)
        if step < self.total_steps:
            self._finalize(trial, "KILLED", f"stopped early by the Tune scheduler at step {step}/{self.total_steps}")
        else:
            self._finalize(trial, "FINISHED", None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = str(getattr(trial, "error_msg", None) or "trial failed").strip().splitlines()
        self._finalize(trial, "FAILED", reason[-1][:1000] if reason else "trial failed")

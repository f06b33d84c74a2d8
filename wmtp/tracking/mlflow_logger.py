"""MLflow backend: embedded SQLite store by default, a tracking server when `tracking.uri` is set.

The only module of wmtp that imports mlflow, and only inside functions (importing mlflow costs
seconds and pulls half of PyPI; `import wmtp.tracking` must stay light).

Layout of the embedded default (MLflow ≥ 3.13 refuses plain `./mlruns` file stores):
    <output_dir>/mlflow.db            the SQLite tracking store (all runs of this output dir)
    <output_dir>/mlartifacts/<exp>/   artifact root of experiments created here (file:// URI)
    <output_dir>/<run>/mlflow_run.json  the MLflow run id of this run dir (resume continues it)
Run `mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db` to browse.
"""
# One module (over 300 lines): one backend: runs, nesting, the status on every exit path and the recorded-run file.

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wmtp.config.redaction import redact, redact_text

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run.json"
# MLflow 3's UI opens an experiment without this tag in its GenAI view ("Evaluations"); this value
# selects the model-training view (runs, charts, metrics).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Why a run ended FAILED or KILLED (shown beside the status in the run's tags).
STATUS_REASON_TAG = "wmtp.status_reason"
# How earlier attempts of a continued run ended ("KILLED: driver died: ..."; one line each): the
# status and reason tag describe the attempt now running, this keeps the ones before it.
PREVIOUS_ATTEMPTS_TAG = "wmtp.previous_attempts"
# Artifacts that could not be uploaded at the end (the artifact store was away); kept in the run dir.
ARTIFACTS_MISSING_TAG = "wmtp.artifacts_missing"
PATH_TAG = "wmtp.path"  # "local" (in-process) or "ray"
# MLflow's server-side limits (mlflow.utils.validation); kept here so the module imports no mlflow.
MAX_PARAM_VAL_LENGTH = 6000
MAX_KEY_LENGTH = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")


def default_tracking_uri(output_dir: str | Path) -> str:
    """`sqlite:////abs/<output_dir>/mlflow.db`."""
    return f"sqlite:///{(Path(output_dir).resolve() / 'mlflow.db').as_posix()}"


def default_artifact_location(output_dir: str | Path) -> str:
    """`file:///abs/<output_dir>/mlartifacts` (experiments created by the embedded default)."""
    return (Path(output_dir).resolve() / "mlartifacts").as_uri()


def sanitize_key(key: str) -> str:
    """MLflow accepts alphanumerics, `_-. :/` in keys, at most 250 characters."""
    return _BAD_KEY_CHARS.sub("_", str(key))[:MAX_KEY_LENGTH]


def prepare_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Redact secrets, stringify, sanitize keys, truncate values to MLflow's 6000 characters."""
    out: dict[str, str] = {}
    for key, value in redact(params).items():
        text = "" if value is None else str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            marker = "...[truncated]"
            text = text[: MAX_PARAM_VAL_LENGTH - len(marker)] + marker
        out[sanitize_key(key)] = text
    return out


def _quiet_mlflow() -> None:
    """MLflow's INFO lines (database set-up, migrations) only with `--verbose` (WMTP_VERBOSE=1)."""
    if os.environ.get("WMTP_VERBOSE") != "1":
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MlflowLogger:
    """One MLflow run per run directory; reruns of the same run dir continue the same MLflow run.

    run_dir: the run directory (`<output_dir>/<run_name>`); the embedded store lives in its parent.
    uri: tracking URI (`http://host:5000`, `sqlite:///...`); None = the embedded default.
    artifact_location: artifact root for the experiment when wmtp creates it (e.g. `s3://b/mlflow`);
        None = `<output_dir>/mlartifacts` for the embedded default, the server's default otherwise.
    parent_run_id: make this a nested (child) run of that run (Tune: one child per trial).
    resume: reuse the run id recorded in `<run_dir>/mlflow_run.json` when it exists in the store.
    say: where an outage of the server is told (the run's console); default a logged warning.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        run_name: str,
        experiment: str = "wmtp",
        uri: str | None = None,
        artifact_location: str | None = None,
        parent_run_id: str | None = None,
        resume: bool = True,
        tags: Mapping[str, str] | None = None,
        say: Any = None,
    ):
        from mlflow.tracking import MlflowClient

        from wmtp.tracking.outage import TrackingOutage, quick_http_retries

        _quiet_mlflow()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        output_dir = self.run_dir.resolve().parent
        self.tracking_uri = uri or default_tracking_uri(output_dir)
        if self.tracking_uri.startswith(("http:", "https:")):
            quick_http_retries()
        # Mid-run outages of the server (or its artifact store) are ridden out (wmtp.tracking.outage).
        self.outage = TrackingOutage(redact_text(self.tracking_uri), str(self.run_dir / "metrics.jsonl"), say=say)
        if artifact_location is None and self.tracking_uri.startswith("sqlite:"):
            # A local store keeps its artifacts beside it (the embedded default), never in a
            # `./mlruns` of whatever folder the process happens to run in. A server decides itself.
            artifact_location = default_artifact_location(Path(self.tracking_uri.removeprefix("sqlite:///")).parent)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.run_name = run_name
        self.experiment_id = self._experiment_id(experiment, artifact_location)
        # In-process and Ray runs of one run dir keep separate checkpoints: a run on the other path
        # is a new attempt, hence a new MLflow run (a rerun on the same path resumes it).
        self.path_kind = (tags or {}).get(PATH_TAG)
        self.run_id = self._resume_run_id() if resume else None
        self.resumed = self.run_id is not None
        if self.run_id is None:
            run_tags = dict(tags or {})
            if parent_run_id:
                run_tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
            self.run_id = run.info.run_id
            self._record_run_id()
        else:
            self._note_previous_attempt()
            self.client.update_run(self.run_id, status="RUNNING")
            if tags:
                self.set_tags(tags)
            log.info("continuing MLflow run %s (%s)", self.run_id, redact_text(self.tracking_uri))
        self._closed = False

    # -- set-up -------------------------------------------------------------------------------

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location,
                                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException:
                # Another process (a Tune trial) created it between our lookup and create.
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.tags.get(EXPERIMENT_KIND_TAG) is None:
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        if artifact_location and exp.artifact_location.rstrip("/") != artifact_location.rstrip("/"):
            log.warning(
                "MLflow experiment %r already exists with artifact root %s; tracking.artifact_location=%s "
                "applies only to new experiments (choose another tracking.experiment to use it)",
                name, exp.artifact_location, artifact_location,
            )
        return exp.experiment_id

    def _resume_run_id(self) -> str | None:
        from mlflow.exceptions import MlflowException

        path = self.run_dir / RUN_ID_FILE
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        if record.get("tracking_uri") != redact_text(self.tracking_uri):
            log.warning("run dir was tracked at %s, now %s: starting a new MLflow run",
                        record.get("tracking_uri"), redact_text(self.tracking_uri))
            return None
        try:
            run = self.client.get_run(record["run_id"])
        except MlflowException:
            log.warning("MLflow run %s recorded in %s is gone: starting a new one", record["run_id"], path)
            return None
        if run.info.lifecycle_stage != "active":
            return None
        if record.get("path") != self.path_kind:
            log.info("run dir was last run on the %s path, now %s: starting a new MLflow run",
                     record.get("path"), self.path_kind)
            return None
        return run.info.run_id

    def _note_previous_attempt(self) -> None:
        """Continuing a run that ended FAILED / KILLED (or a dead driver's, ended by
        `end_dead_attempt`): its status and reason move to `wmtp.previous_attempts`, so the reason
        tag never describes the attempt now running."""
        run = self.client.get_run(self.run_id)
        reason = run.data.tags.get(STATUS_REASON_TAG)
        if run.info.status in ("FAILED", "KILLED") or reason:
            before = run.data.tags.get(PREVIOUS_ATTEMPTS_TAG)
            line = f"{run.info.status}: {reason or '(no reason recorded)'}"
            self.client.set_tag(self.run_id, PREVIOUS_ATTEMPTS_TAG, "\n".join(filter(None, [before, line]))[-5000:])
        if reason is not None:
            self.client.delete_tag(self.run_id, STATUS_REASON_TAG)

    def _record_run_id(self) -> None:
        record = {"run_id": self.run_id, "experiment_id": self.experiment_id,
                  "tracking_uri": redact_text(self.tracking_uri), "path": self.path_kind}
        tmp = self.run_dir / f".{RUN_ID_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.run_dir / RUN_ID_FILE)

    # -- MetricLogger -------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        params = dict(params)
        if "run.name" in params and params["run.name"] in (None, "null"):
            params["run.name"] = self.run_name  # the default name, as the run dir and MLflow show it
        prepared = prepare_params(params)
        self.outage.call("params", lambda: self._log_params(prepared))

    def _log_params(self, prepared: dict[str, str]) -> None:
        from mlflow.entities import Param

        if self.resumed:
            # MLflow params are immutable: on resume log only new keys, and say which changed.
            existing = self.client.get_run(self.run_id).data.params
            changed = sorted(k for k, v in prepared.items() if k in existing and existing[k] != v)
            if changed:
                log.warning("resumed run %s: params changed since the first attempt, kept the "
                            "original values for %s", self.run_id, ", ".join(changed))
            prepared = {k: v for k, v in prepared.items() if k not in existing}
        entries = [Param(k, v) for k, v in prepared.items()]
        for chunk in _chunks(entries, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk, synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(sanitize_key(k), float(v), now, int(step)) for k, v in metrics.items()]

        def send() -> None:
            for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)

        self.outage.call(f"metrics of step {step}", send)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(local_path)
        upload = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
        self.outage.call(f"artifact {path}", lambda: upload(self.run_id, str(path), artifact_path))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in redact(tags).items():
            self.outage.call(f"tag {key}", lambda k=sanitize_key(key), v=str(value): self.client.set_tag(self.run_id, k, v))  # type: ignore[misc]  # defaults bind each tag

    def close(self, status: str = "FINISHED") -> None:
        """End the run; `status` is FINISHED, FAILED or KILLED."""
        if not self._closed:
            self._closed = True
            if self._caught_up(status):
                self.client.set_terminated(self.run_id, status=status)

    logs_summary = True  # `end_run` hands it the summary file

    def end(self, status: str, reason: str | None = None, summary_path: str | Path | None = None) -> None:
        """End the run with `status` and, for FAILED / KILLED, why (tag `wmtp.status_reason`),
        logging the end-of-run summary file when given."""
        if not self._closed:
            self._closed = True
            if self._caught_up(status):
                finalize_run(self.client, self.run_id, status, reason, summary_path)  # type: ignore[arg-type]  # a started run has its id

    def _caught_up(self, status: str) -> bool:
        """Replay what an outage kept; False (said) when the server is still away at the end."""
        if self.outage.flush(final=True):
            return True
        log.warning("MLflow run %s could not be ended %s (server unreachable); it shows RUNNING until the "
                    "same command is rerun. Everything is in %s", self.run_id, status, self.run_dir)
        return False


def finalize_run(client: Any, run_id: str, status: str, reason: str | None = None,
                 summary_path: str | Path | None = None) -> None:
    """Log the summary (artifact + `time/*` metrics), the reason tag, then the terminal status."""
    from mlflow.entities import Metric

    if summary_path is not None and Path(summary_path).is_file():
        try:
            client.log_artifact(run_id, str(summary_path))
        except Exception as exc:  # the artifact store (e.g. S3) is away: the run still ends, not RUNNING
            log.warning("MLflow run %s: summary.json not uploaded to its artifacts (%s: %s); it is kept at %s",
                        run_id, type(exc).__name__, str(exc).strip()[:300], summary_path)
            client.set_tag(run_id, ARTIFACTS_MISSING_TAG, f"summary.json: {type(exc).__name__}")
        summary = json.loads(Path(summary_path).read_text())
        now, step = int(time.time() * 1000), int(summary.get("step") or 0)
        entries = [Metric(sanitize_key(f"time/{k}_s"), float(v), now, step)
                   for k, v in summary.get("phases_s", {}).items()]
        entries.append(Metric("time/wall_s", float(summary.get("wall_s", 0.0)), now, step))
        client.log_batch(run_id, metrics=entries, synchronous=True)
    if status != "FINISHED" or reason:
        client.set_tag(run_id, STATUS_REASON_TAG, redact_text(reason or status)[:5000])
    client.set_terminated(run_id, status=status)


def end_dead_attempt(run_dir: str | Path, reason: str) -> str | None:
    """End the MLflow run recorded in `<run_dir>/mlflow_run.json` as KILLED with `reason` when it
    is still RUNNING: its process died without ending it (a SIGKILLed driver, whose stale run lock
    a new start took over). A rerun that continues the run keeps this in `wmtp.previous_attempts`.
    Returns the run id ended, None when there was nothing to end."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    path = Path(run_dir) / RUN_ID_FILE
    if not path.is_file():
        return None
    _quiet_mlflow()
    record = json.loads(path.read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    try:
        if client.get_run(record["run_id"]).info.status != "RUNNING":
            return None
    except MlflowException:
        return None  # deleted, or another store: nothing of ours to end
    finalize_run(client, record["run_id"], "KILLED", reason)
    return record["run_id"]


def preload_client() -> None:
    """Import MLflow's client ahead of `finalize_recorded_run` (a driver stopped by `ray job stop`
    has ~3 s before SIGKILL; the import alone can take that). Errors surface where it is used."""
    try:
        import mlflow.tracking  # noqa: F401
    except Exception:
        pass


def finalize_recorded_run(run_dir: str | Path, status: str, reason: str | None = None,
                          summary_path: str | Path | None = None) -> str | None:
    """`finalize_run` for the MLflow run recorded in `<run_dir>/mlflow_run.json` (the Ray driver:
    rank 0 logged the run, the driver knows how it ended). Returns the run id, None without one."""
    from mlflow.tracking import MlflowClient

    path = Path(run_dir) / RUN_ID_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    finalize_run(MlflowClient(tracking_uri=record["tracking_uri"]), record["run_id"], status, reason, summary_path)
    return record["run_id"]


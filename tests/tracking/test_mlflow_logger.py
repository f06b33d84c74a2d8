"""MLflow backend on a SQLite store, read back through MlflowClient."""

from __future__ import annotations

import json
import math
from pathlib import Path

from wmtp.tracking import NullLogger, build_logger, mlflow_run_id
from wmtp.tracking.mlflow_logger import MAX_PARAM_VAL_LENGTH, RUN_ID_FILE, MlflowLogger, default_tracking_uri


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_params_metrics_artifacts_and_resume(mlflow_sqlite, tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    lg = MlflowLogger(run_dir, run_name="demo", experiment="exp-a", uri=mlflow_sqlite.uri,
                      artifact_location=mlflow_sqlite.artifact_uri)
    many = {f"p.{i:03d}": i for i in range(150)}  # > 100: several log_batch calls
    lg.log_params({**many, "long": "x" * 7000, "model.params[dim]": 8, "AWS_SECRET_ACCESS_KEY": "s",
                   "tracking.uri": "http://u:pw@host"})
    lg.log_metrics({"train/loss": 2.5, "lr": 1e-3}, step=1)
    lg.log_metrics({"train/loss": 2.0}, step=2)
    art = tmp_path / "heatmap.html"
    art.write_text("<html></html>")
    lg.log_artifact(art, "heatmaps")
    adir = tmp_path / "cfg"
    adir.mkdir()
    (adir / "resolved.yaml").write_text("a: 1\n")
    lg.log_artifact(adir, "config")
    run_id = lg.run_id
    lg.close()

    client = mlflow_sqlite.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "demo"
    params = run.data.params
    assert params["p.149"] == "149" and len([k for k in params if k.startswith("p.")]) == 150
    assert len(params["long"]) == MAX_PARAM_VAL_LENGTH and params["long"].endswith("[truncated]")
    assert params["model.params_dim_"] == "8"
    assert "AWS_SECRET_ACCESS_KEY" not in params and "tracking.uri" not in params
    assert _history(client, run_id, "train/loss") == [(1, 2.5), (2, 2.0)]
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "exp-a" and exp.artifact_location == mlflow_sqlite.artifact_uri
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["config", "heatmaps"]
    assert [a.path for a in client.list_artifacts(run_id, "heatmaps")] == ["heatmaps/heatmap.html"]
    assert run.info.artifact_uri == f"{mlflow_sqlite.artifact_uri}/{run_id}/artifacts"
    assert (mlflow_sqlite.artifact_dir / run_id / "artifacts" / "config" / "resolved.yaml").read_text() == "a: 1\n"

    # Rerunning in the same run dir continues the same MLflow run.
    assert json.loads((run_dir / RUN_ID_FILE).read_text())["run_id"] == run_id
    lg2 = MlflowLogger(run_dir, run_name="demo", experiment="exp-a", uri=mlflow_sqlite.uri)
    assert lg2.run_id == run_id and lg2.resumed
    assert client.get_run(run_id).info.status == "RUNNING"
    lg2.log_params({"p.000": 0, "p.001": "changed", "new.key": float("nan")})  # immutable params kept
    lg2.log_metrics({"train/loss": 1.5, "nonfinite": math.inf}, step=3)
    lg2.close()
    run = client.get_run(run_id)
    assert run.data.params["p.001"] == "1" and run.data.params["new.key"] == "nan"
    assert _history(client, run_id, "train/loss") == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_embedded_default_and_nested_runs(tmp_path):
    out = tmp_path / "runs"
    parent = build_logger(["mlflow"], run_dir=out / "sweep", run_name="sweep", experiment="tune")
    parent_id = mlflow_run_id(parent)
    assert parent_id == parent.loggers[0].run_id and mlflow_run_id(NullLogger()) is None
    child = build_logger(["mlflow", "jsonl"], run_dir=out / "trial_0", run_name="trial_0",
                         experiment="tune", parent_run_id=parent_id)
    child.log_metrics({"valid/loss": 1.25}, step=10)
    child_id = mlflow_run_id(child)
    child.close()
    parent.close()
    assert (out / "mlflow.db").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=default_tracking_uri(out))
    run = client.get_run(child_id)
    assert run.data.tags["mlflow.parentRunId"] == parent_id
    assert _history(client, child_id, "valid/loss") == [(10, 1.25)]
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.artifact_location == (out.resolve() / "mlartifacts").as_uri()
    assert Path(out / "trial_0" / "metrics.jsonl").exists()


def test_a_dead_attempt_is_ended_killed_then_continued_with_its_end_kept(mlflow_sqlite, tmp_path):
    """What a start that took over a SIGKILLed driver's stale lock does (`wmtp train` reruns the
    same command): the RUNNING run the dead attempt left is ended KILLED with the reason; the rerun
    continues it RUNNING, the dead attempt's end kept in `wmtp.previous_attempts`; an ended run is
    never touched."""
    import socket
    import subprocess
    import sys

    from wmtp.tracking.registry import end_dead_attempt
    from wmtp.training.runlock import hold_run_lock

    run_dir = tmp_path / "demo"
    first = MlflowLogger(run_dir, run_name="demo", uri=mlflow_sqlite.uri)  # never ended: killed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # its pid: gone (or reused, started later)
    dead.wait()
    (run_dir / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                   "pid_start": "1", "started": "2026-01-01T00:00:00Z"}))
    lock = hold_run_lock(run_dir)
    try:
        reason = lock.takeover_reason
        assert reason.startswith(f"driver died: stale lock of pid {dead.pid} taken over")
        end_dead_attempt(run_dir, reason)
        run = first.client.get_run(first.run_id)
        assert run.info.status == "KILLED" and run.data.tags["wmtp.status_reason"] == reason

        rerun = MlflowLogger(run_dir, run_name="demo", uri=mlflow_sqlite.uri)
        assert rerun.run_id == first.run_id
        run = rerun.client.get_run(rerun.run_id)
        assert run.info.status == "RUNNING" and "wmtp.status_reason" not in run.data.tags
        assert run.data.tags["wmtp.previous_attempts"] == f"KILLED: {reason}"
        rerun.end("FINISHED")
        end_dead_attempt(run_dir, "driver died: again?")  # ended runs are left alone
        run = rerun.client.get_run(rerun.run_id)
        assert run.info.status == "FINISHED" and "wmtp.status_reason" not in run.data.tags
    finally:
        lock.release()

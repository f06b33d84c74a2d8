"""Runs ride out their tracking services: a real `mlflow server` killed mid-run (and restarted),
and an S3 artifact store (moto in server mode) killed mid-run.

At HEAD the first run stopped FAILED after minutes of MLflow's HTTP retries; the second ended with
exit 1 after training and left its MLflow run RUNNING."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.services import _stop, _wait_http, free_port
from tests.recipes.harness import cli_command
from wmtp.tracking.outage import TrackingOutage, is_unreachable

RUN = "baseline-local-light"


def _last_step(jsonl: Path) -> int:
    if not jsonl.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in jsonl.read_text().splitlines() if line.strip()]
    return max([s for s in steps if isinstance(s, int)], default=0)


def _wait_step(proc: subprocess.Popen, jsonl: Path, step: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while (now := _last_step(jsonl)) < step:
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, f"step {step} not reached"
        time.sleep(0.2)
    return now


def _start(cmd: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, env={**os.environ, "PYTHONWARNINGS": "ignore", **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_unreachable_calls_are_kept_in_order_and_replayed():
    """The buffer itself: a refused call is kept with the later ones, said once, replayed in order."""
    up, sent, clock = [True], [], [0.0]

    def send(i):
        def call():
            if not up[0]:
                raise ConnectionError("Connection refused")
            sent.append(i)
        return call

    outage = TrackingOutage("http://h", "m.jsonl", retry_s=10, clock=lambda: clock[0], sleep=lambda s: None)
    outage.call("m0", send(0))
    up[0] = False
    outage.call("m1", send(1))
    clock[0] = 5
    outage.call("m2", send(2))  # not retried before 10 s
    assert outage.down and sent == [0] and len(outage.pending) == 2
    up[0] = True
    clock[0] = 11
    outage.call("m3", send(3))
    assert sent == [0, 1, 2, 3] and not outage.down and outage.outages == 1
    with pytest.raises(ValueError):  # anything else still raises
        outage.call("bad", lambda: (_ for _ in ()).throw(ValueError("invalid metric")))
    assert is_unreachable(RuntimeError("API request to http://h failed: Max retries exceeded"))


@pytest.mark.slow  # a 60-step run around a server kill and restart: ≈ 45 s on a busy 2-core machine
@pytest.mark.timeout(900)
def test_mlflow_server_killed_mid_run_then_restarted(tmp_path, mlflow_server):
    out = tmp_path / "runs"
    steps = 60
    cmd = cli_command("baseline", out, "tracking.backends=[stdout,mlflow,jsonl]", f"tracking.uri={mlflow_server.uri}",
                      f"train.steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
                      "train.export_formats=[]")
    proc = _start(cmd, WMTP_TRACKING_RETRY_S="2")
    jsonl = out / RUN / "metrics.jsonl"
    try:
        killed_at = _wait_step(proc, jsonl, 3)
        mlflow_server.kill()
        _wait_step(proc, jsonl, killed_at + 6)  # training goes on without the server
        mlflow_server.start()
        console, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, console[-4000:]
    assert f"{RUN}: FINISHED at step {steps}/{steps}" in console
    assert console.count("is unreachable") == 1 and "training continues" in console, console[-4000:]
    run_id = json.loads((out / RUN / "mlflow_run.json").read_text())["run_id"]
    client = mlflow_server.client()
    assert client.get_run(run_id).info.status == "FINISHED"
    logged = sorted({m.step for m in client.get_metric_history(run_id, "train/loss")})
    assert logged == list(range(1, steps + 1))  # the outage's steps were replayed


@pytest.mark.timeout(900)
def test_artifact_store_killed_mid_run_ends_the_run_with_the_model_kept(tmp_path, mlflow_sqlite):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        _wait_http(f"{endpoint}/moto-api/", moto)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="art")
        out = tmp_path / "runs"
        steps = 12
        cmd = cli_command("baseline", out, "tracking.backends=[stdout,mlflow,jsonl]", f"tracking.uri={mlflow_sqlite.uri}",
                          "tracking.artifact_location=s3://art/mlflow", "tracking.experiment=s3-art",
                          f"train.steps={steps}", f"train.checkpoint_every={steps}", f"train.eval_every={steps}")
        proc = _start(cmd, **aws)
        try:
            _wait_step(proc, out / RUN / "metrics.jsonl", 2)  # config.yaml was uploaded at the start
            _stop(moto)
            console, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        _stop(moto)
    assert proc.returncode == 0, console[-4000:]
    assert f"{RUN}: FINISHED at step {steps}/{steps}" in console and "Traceback" not in console, console[-4000:]
    assert "summary.json not uploaded" in console or "not uploaded (kept on disk)" in console, console[-4000:]
    assert (out / RUN / "export" / "params.json").is_file() and (out / RUN / "summary.json").is_file()
    run_id = json.loads((out / RUN / "mlflow_run.json").read_text())["run_id"]
    run = mlflow_sqlite.client().get_run(run_id)
    assert run.info.status == "FINISHED", run.info

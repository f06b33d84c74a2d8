"""No planted secret appears anywhere a run writes: a password in `tracking.uri` (a real `mlflow
server`) and S3 credentials in the environment, grepped in the console, summary.json, the config
copies, the metrics JSONL, mlflow_run.json, and the server's store and artifacts.

At HEAD the password came back in the summary's `next:` resume command (console, summary.json and
its MLflow artifact copy)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.recipes.harness import cli_command

PASSWORD = "Pw-planted-7f3a9"
S3_SECRET = "S3-planted-c41e"


def _files_holding(root, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


@pytest.mark.timeout(600)
def test_planted_secrets_reach_no_output(tmp_path, mlflow_server):
    out = tmp_path / "runs"
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{mlflow_server.port}"
    cmd = cli_command("baseline", out, "tracking.backends=[stdout,mlflow,jsonl]", f"tracking.uri={uri}",
                      "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2", "train.export_formats=[]")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "AWS_ACCESS_KEY_ID": "AKIAPLANTEDEXAMPLE01",
           "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    env.pop("MLFLOW_TRACKING_PASSWORD", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]
    assert "FINISHED at step 2/2" in console
    run = out / "baseline-local-light"
    assert (run / "summary.json").is_file() and (run / "config.yaml").is_file()
    assert "tracking.uri=http://<redacted>@127.0.0.1" in (run / "summary.json").read_text()
    for secret in (PASSWORD, S3_SECRET, "AKIAPLANTEDEXAMPLE01"):
        assert secret not in console, console[-3000:]
        assert _files_holding(out, secret.encode()) == []
        assert _files_holding(mlflow_server.root, secret.encode()) == []
    # The summary uploaded to the server's artifacts is the redacted one.
    uploaded = _files_holding(mlflow_server.root / "artifacts", b'"next"')
    assert uploaded and all(b"<redacted>@" in open(p, "rb").read() for p in uploaded)

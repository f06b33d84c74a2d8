"""Tracking backends: JSONL round trip, redaction, fan-out, heatmap escaping (console: test_console.py)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from wmtp.tracking import MetricLogger, MultiLogger, NullLogger, build_logger, redact
from wmtp.tracking.heatmap import token_weight_heatmap_html
from wmtp.tracking.jsonl import JsonlLogger, metric_series, read_records


def test_importing_tracking_does_not_import_mlflow():
    code = "import sys, wmtp.tracking, wmtp.tracking.heatmap; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_redact_drops_secret_keys_and_values():
    params = {
        "optim.lr": 0.003,
        "AWS_SECRET_ACCESS_KEY": "abc",
        "aws_access_key_id": "x",
        "tracking.password": "hunter2",
        "storage.client_secret": "s",
        "hf_token": "t",
        "auth.token": "t",
        "model.tokenizer": "/data/tok.model",
        "perf.tokens_per_s": 1.0,
        "data.train": "s3://bucket/train.jsonl",
        "tracking.uri": "http://alice:pw@mlflow:5000",
        "model.checkpoint": "AKIAABCDEFGHIJKLMNOP",
    }
    kept = redact(params)
    assert kept == {
        "optim.lr": 0.003,
        "model.tokenizer": "/data/tok.model",
        "perf.tokens_per_s": 1.0,
        "data.train": "s3://bucket/train.jsonl",
    }


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    lg = JsonlLogger(path)
    assert isinstance(lg, MetricLogger)
    lg.log_params({"optim.lr": 0.001, "db_password": "x"})
    lg.log_metrics({"train/loss": 2.5, "lr": 1e-3}, step=1)
    lg.log_metrics({"train/loss": float("nan")}, step=2)
    lg.log_artifact(tmp_path / "a.html", "heatmaps")
    lg.close()
    # A rerun appends; the last value per step wins.
    lg = JsonlLogger(path)
    lg.log_metrics({"train/loss": 2.0}, step=2)
    lg.close()
    recs = read_records(path)
    assert recs[0] == {"params": {"optim.lr": "0.001"}}
    assert recs[1] == {"step": 1, "metrics": {"train/loss": 2.5, "lr": 1e-3}}
    assert recs[3]["artifact_path"] == "heatmaps"
    assert metric_series(path, "train/loss") == [(1, 2.5), (2, 2.0)]
    assert math.isnan(float(recs[2]["metrics"]["train/loss"]))


class _Recorder:
    def __init__(self, fail_close=False):
        self.calls = []
        self.fail_close = fail_close

    def log_params(self, params):
        self.calls.append(("params", dict(params)))

    def log_metrics(self, metrics, step):
        self.calls.append(("metrics", dict(metrics), step))

    def log_artifact(self, local_path, artifact_path=None):
        self.calls.append(("artifact", local_path, artifact_path))

    def close(self):
        self.calls.append(("close",))
        if self.fail_close:
            raise RuntimeError("boom")


def test_multilogger_fans_out_and_closes_all():
    a, b = _Recorder(fail_close=True), _Recorder()
    m = MultiLogger([a, b])
    m.log_params({"x": 1})
    m.log_metrics({"loss": 1.0}, 3)
    m.log_artifact("f", "d")
    with pytest.raises(RuntimeError, match="boom"):
        m.close()
    assert a.calls == b.calls == [
        ("params", {"x": 1}), ("metrics", {"loss": 1.0}, 3), ("artifact", "f", "d"), ("close",)
    ]


def test_build_logger_registry(tmp_path):
    assert isinstance(build_logger(["jsonl"], run_dir=tmp_path, run_name="r", is_main=False), NullLogger)
    assert isinstance(build_logger([], run_dir=tmp_path, run_name="r"), NullLogger)
    with pytest.raises(ValueError, match=r"unknown backend\(s\) \['wandb'\].*allowed: \['jsonl', 'mlflow', 'stdout'\]"):
        build_logger(["wandb"], run_dir=tmp_path, run_name="r")
    lg = build_logger(["jsonl", "jsonl"], run_dir=tmp_path / "r", run_name="r")
    lg.log_metrics({"loss": 1.5}, 1)
    lg.close()
    assert metric_series(tmp_path / "r" / "metrics.jsonl", "loss") == [(1, 1.5)]


def test_heatmap_escapes_and_colours():
    tokens = [["def", " f", "(<x>", "&", '"q"'], ["</div><script>alert(1)</script>"]]
    weights = [[1.0, 5.0, 0.0, float("nan"), 1.0], [2.0]]
    page = token_weight_heatmap_html(tokens, weights, title="<b>step 5</b>", row_labels=["p1 'ok'", "p2"])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "(&lt;x&gt;" in page and ">&amp;<" in page and "&quot;q&quot;" in page
    assert "<title>&lt;b&gt;step 5&lt;/b&gt;</title>" in page
    assert "p1 &#x27;ok&#x27;" in page
    assert 'background:rgb(255,64,64)' in page   # the max weight (5.0): full red
    assert 'background:rgb(64,64,255)' in page   # the min weight (0.0): full blue
    assert 'background:rgb(255,255,255)' in page  # neutral weight 1
    assert 'background:rgb(160,160,160)' in page  # NaN
    assert "w=5.0000" in page
    with pytest.raises(ValueError, match="row 0: 2 tokens but 1 weights"):
        token_weight_heatmap_html([["a", "b"]], [[1.0]], "t")


def test_heatmap_marks_outcomes_and_renders_a_png(tmp_path):
    from wmtp.tracking.heatmap import outcome_labels, token_weight_heatmap_png

    labels = outcome_labels([True, False, None])
    assert labels == ["sample 0: ✓ correct", "sample 1: ✗ incorrect", "sample 2: outcome unknown"]
    page = token_weight_heatmap_html([["a"], ["b"], ["c"]], [[1.0], [2.0], [0.5]], "t", row_labels=labels)
    assert "✓ correct" in page and "✗ incorrect" in page
    path = tmp_path / "w.png"
    token_weight_heatmap_png([[1.0, 2.0, 0.5], [float("nan"), 1.5], [0.2]], path, "step 5", row_labels=labels)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000

"""Custom wmtp metrics reach the node's Prometheus endpoint, tagged by rank."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import pytest

from tests.orchestration.helpers import short_config
from tests.orchestration.toy_recipe import ToyRecipeBuilder
from wmtp.orchestration.dashboard import _first_match
from wmtp.orchestration.launch import run_training

pytestmark = pytest.mark.ray


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def test_metrics_endpoint_shows_wmtp_gauges_per_rank(ray_cluster, tmp_path):
    cfg = short_config(tmp_path, "dash", steps=12)
    seen: dict[str, str] = {}

    def poll() -> None:
        # The metrics agent exports every few seconds: poll while the run is going, bounded.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "text" not in seen:
            text = scrape(ray_cluster.metrics_export_port)
            if re.search(r'wmtp_loss\{[^}]*rank="1"', text) and re.search(r'wmtp_loss\{[^}]*rank="0"', text):
                seen["text"] = text
            time.sleep(0.5)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    run_training(cfg, recipe_builder=ToyRecipeBuilder(str(tmp_path / "rec"), step_sleep_s=0.5))
    poller.join(timeout=90)
    assert "text" in seen, "no wmtp_loss samples for ranks 0 and 1 on the metrics endpoint"
    text = seen["text"]
    for name in ("wmtp_loss", "wmtp_tokens_per_s", "wmtp_steps"):
        assert re.search(rf'^\w*{name}\w*\{{[^}}]*run="dash"', text, re.M), name


def test_gauges_read_training_metrics_by_suffix_not_validation():
    metrics = {"valid/loss": 9.0, "train/loss": 2.0, "train/weights/mean": 1.1, "train/critic_staleness": 1.0}
    assert _first_match(metrics, ("train/loss", "loss")) == 2.0
    assert _first_match({"valid/loss": 9.0}, ("train/loss", "loss")) is None
    assert _first_match(metrics, ("weight_mean", "weights/mean")) == 1.1
    assert _first_match(metrics, ("critic_staleness",)) == 1.0
    assert _first_match({"train/value_clip_fraction": 0.25}, ("value_clip_fraction", "clip_fraction")) == 0.25
    assert _first_match({"train/weights/mean_before_renorm": 3.0}, ("weights/mean",)) is None
    assert _first_match({"train/loss": float("nan")}, ("loss",)) is None

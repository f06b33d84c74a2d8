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


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prometheus_scrapes_every_wmtp_metric(ray_cluster, tmp_path):
    """A real Prometheus (`apt-get install prometheus`; else this reads the export endpoint, as
    docs/DASHBOARD.md says) scrapes the node during a 2-worker run: every name the Grafana
    dashboard queries that the toy run sets is in its database, for both ranks. Slow: ~1 min."""
    import json
    import shutil
    import subprocess
    import urllib.parse

    from tests.fixtures.services import free_port
    from wmtp.orchestration.dashboard import prometheus_names

    binary = shutil.which("prometheus")
    port = free_port()
    proc = None
    if binary:
        config = tmp_path / "prometheus.yml"
        config.write_text("global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: ray\n    static_configs:\n"
                          f"      - targets: ['127.0.0.1:{ray_cluster.metrics_export_port}']\n")
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        cfg = short_config(tmp_path, "prom", steps=12)
        run_training(cfg, recipe_builder=ToyRecipeBuilder(str(tmp_path / "rec"), step_sleep_s=0.5))
        # The toy recipe logs loss, tokens/s and the step counter (no weights, critic or actors).
        wanted = {"ray_wmtp_loss", "ray_wmtp_tokens_per_s", "ray_wmtp_steps_total"}
        assert wanted <= prometheus_names()
        found: dict[str, set[str]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and set(found) != wanted:
            for name in wanted:
                if binary:
                    query = urllib.parse.quote(f'{name}{{run="prom"}}')
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={query}",
                                                    timeout=5) as resp:
                            result = json.loads(resp.read())["data"]["result"]
                    except OSError:
                        continue
                    ranks = {r["metric"].get("rank") for r in result}
                else:
                    text = scrape(ray_cluster.metrics_export_port)
                    ranks = set(re.findall(rf'^{name}\{{[^}}]*rank="(\d)"[^}}]*run="prom"', text, re.M))
                if {"0", "1"} <= ranks:
                    found[name] = ranks
            time.sleep(1)
        assert set(found) == wanted, (binary, found)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

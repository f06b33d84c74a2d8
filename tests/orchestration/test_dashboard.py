"""Custom wmtp metrics reach the node's Prometheus endpoint, tagged by rank."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.orchestration.helpers import short_config
from tests.orchestration.toy_recipe import ToyRecipeBuilder
from wmtp.orchestration.dashboard import _first_match
from wmtp.orchestration.launch import run_training

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


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


def _session_prometheus_config(ray_tmp: Path, proc: subprocess.Popen, timeout: float) -> Path:
    """The Prometheus config the local cluster's head writes into its session (Ray's dashboard does,
    with the service-discovery file of every node's export port beside it), once both exist."""
    session = ray_tmp / "ray" / "session_latest"
    config = session / "metrics" / "prometheus" / "prometheus.yml"
    deadline = time.monotonic() + timeout
    while not (config.is_file() and (session / "prom_metrics_service_discovery.json").is_file()):
        assert proc.poll() is None, f"wmtp train ended ({proc.returncode}) before its cluster wrote {config}"
        assert time.monotonic() < deadline, f"no {config} within {timeout:.0f} s"
        time.sleep(0.5)
    return config


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary (apt-get install -y prometheus)")
def test_prometheus_on_rays_session_config_has_the_gauges_of_a_readme_run(tmp_path):
    """docs/DASHBOARD.md's way without Grafana, as a user runs it: plain `wmtp train` (its own local
    cluster, dashboard included: 2 learners, verifiable with async experience actors) and the
    packaged Prometheus on the config Ray writes into the session
    (`prometheus --config.file=<ray tmp>/session_latest/metrics/prometheus/prometheus.yml`, scraping
    through Ray's service-discovery file every 10 s). Afterwards Prometheus's database holds every
    wmtp series a CPU run sets, for both ranks; with a Chromium, scripts/mlflow_screenshots.py
    shoots its graph page of them. Slow: the chained critic + verifiable run, ~3-5 min on 2 cores."""
    from tests.fixtures.services import free_port
    from wmtp.orchestration.dashboard import prometheus_names

    ray_tmp = Path(tempfile.mkdtemp(prefix="wpr", dir="/tmp"))  # short: Ray's AF_UNIX socket paths
    out, port = tmp_path / "runs", free_port()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "WMTP_METRICS_PORT": str(free_port()),
           "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    # 40 steps a stage: the policy stage's gauges live ~40 s or more, several of Ray's 10 s scrapes
    train = subprocess.Popen(
        [sys.executable, "-m", "wmtp", "train", "--recipe", "configs/recipe.verifiable.yaml", "--preset", "local-light",
         "train.steps=40", "train.eval_every=20", "train.checkpoint_every=20", "tracking.backends=[stdout,jsonl]",
         f"run.output_dir={out}"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    prometheus = None
    try:
        config = _session_prometheus_config(ray_tmp, train, timeout=300)
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log, _ = train.communicate(timeout=1200)
        assert train.returncode == 0, log[-3000:]
        run = "verifiable-local-light"
        # CPU: no MFU and no GPU memory; everything else the verifiable recipe and its actors set
        wanted = {n for n in prometheus_names() if not n.startswith(("ray_wmtp_mfu", "ray_wmtp_gpu_mem"))}
        ranks: dict[str, set[str]] = {}
        for name in sorted(wanted):
            query = urllib.parse.quote(f'count_over_time({name}{{run="{run}"}}[1h])')
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={query}", timeout=30) as resp:
                result = json.loads(resp.read())["data"]["result"]
            ranks[name] = {r["metric"].get("rank") for r in result}
        assert all(ranks[name] == {"0", "1"} for name in wanted), ranks
        script = REPO / "scripts" / "mlflow_screenshots.py"
        if shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome"):
            shots = tmp_path / "shots"
            proc = subprocess.run([sys.executable, str(script), "--no-mlflow", "--output-dir", str(out),
                                   "--run-dir", str(out / run), "--out", str(shots),
                                   "--prometheus", f"http://127.0.0.1:{port}", "--width", "1000"],
                                  cwd=REPO, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            assert proc.stdout.split() == [str(shots / "prometheus.png")]
            text = (shots / "prometheus.txt").read_text()
            assert "ray_wmtp_loss" in text and 'rank="0"' in text and 'rank="1"' in text
    finally:
        if train.poll() is None:
            train.terminate()
            train.wait(timeout=120)
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)

"""The MLflow UI, seen by a real browser: `scripts/mlflow_screenshots.py` on a short run's store.

The end-to-end test is slow (a chained critic + verifiable run, `mlflow ui`, four headless-Chromium
page loads: ~2-4 min on 2 busy cores) and skipped without a Chromium (`apt-get install -y
chromium`). The fast tests keep the command docs/TRACKING.md gives runnable and the pages'
checks honest without a browser.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from tests.recipes.harness import REPO, cli_command, subprocess_env

SCRIPT = REPO / "scripts" / "mlflow_screenshots.py"
PAGES = ("experiment", "run", "metrics", "heatmap")
# Prometheus's graph page of the README main job's gauges (--prometheus; no Grafana on this machine)
PROMETHEUS_PICTURE = REPO / "docs" / "img" / "prometheus_wmtp_gauges.png"


def _script():
    spec = importlib.util.spec_from_file_location("mlflow_screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_screenshot_command_is_this_script():
    """docs/TRACKING.md's command names this script and only options it has (the slow test runs it)."""
    text = (REPO / "docs" / "TRACKING.md").read_text()
    commands = re.findall(r"python (scripts/mlflow_screenshots\.py[^\n`]*)", text)
    assert commands, "docs/TRACKING.md gives no screenshot command"
    script = _script()
    for command in commands:
        args = command.split()[1:]
        assert (REPO / command.split()[0]).is_file()
        options = {a for a in args if a.startswith("--")}
        assert options <= {"--output-dir", "--run-dir", "--out", "--width", "--timeout", "--prometheus",
                           "--no-mlflow"}, command
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--output-dir" in proc.stdout
    for name in PAGES:  # every committed picture the docs show is one the script makes
        assert f"img/mlflow_{name}.png" in text
        assert (REPO / "docs" / "img" / f"mlflow_{name}.png").stat().st_size < 150_000
    assert set(script.pages({"experiment_id": "1", "run_id": "r"}, "x", {}, "heatmaps/a.png")) == set(PAGES)


def test_the_script_refuses_a_folder_without_a_store(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--output-dir", str(tmp_path), "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no MLflow store" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--no-mlflow", "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "without --prometheus" in proc.stderr


def test_the_metrics_page_charts_the_loss_and_each_heads_ce_of_train_and_validation():
    script = _script()
    keys = ["train/loss", "train/ce_head1", "train/ce_head2", "train/weighted_ce_head1", "train/grad_norm",
            "val/ce", "val/ce_head1", "val/ce_head2", "val/critic_auc", "worker/0/train/tokens", "perf/tokens_per_s"]
    assert script.curve_keys(keys) == ["train/ce_head1", "train/ce_head2", "train/loss", "val/ce_head1", "val/ce_head2"]
    page = script.pages({"experiment_id": "1", "run_id": "r"}, "x", {}, None, keys)["metrics"]
    assert {"(train/loss)", "(train/ce_head2)", "(val/ce_head2)"} <= set(page[1]) and page[2].endswith(", 5)")


def test_the_prometheus_page_tables_every_gauge_and_graphs_them_per_rank_over_the_run(tmp_path):
    import json
    import os
    import urllib.parse

    from wmtp.orchestration.dashboard import prometheus_names

    script = _script()
    assert set(script.GAUGE_PANELS) <= prometheus_names()
    (tmp_path / "summary.json").write_text(json.dumps({"wall_s": 250.0}))
    os.utime(tmp_path / "summary.json", (1_800_000_000, 1_800_000_000))  # 2027-01-15 08:00:00 UTC
    end, minutes = script.run_window(tmp_path)
    assert (end, minutes) == (1_800_000_000, 6)
    url, expect, ready, _ = script.prometheus_page("http://127.0.0.1:9090/", end, minutes, "verifiable-local-light")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert url.startswith("http://127.0.0.1:9090/graph?")
    # a table of every wmtp series of the run, by gauge and rank, at the run's end
    assert query["g0.expr"] == ['max by (__name__, rank) ({__name__=~"ray_wmtp_.*",run="verifiable-local-light"})']
    assert query["g0.tab"] == ["1"] and query["g0.moment_input"] == ["2027-01-15 08:00:00"]
    for i, name in enumerate(script.GAUGE_PANELS, start=1):  # then graphs, one line per rank
        assert query[f"g{i}.expr"] == [f'max by (rank) ({name}{{run="verifiable-local-light"}})']
        assert query[f"g{i}.tab"] == ["0"] and query[f"g{i}.range_input"] == ["6m"]
        assert query[f"g{i}.end_input"] == ["2027-01-15 08:01"]
    assert 'rank="1"' in expect and "ray_wmtp_weight_std" in expect and "svg path" in ready


def test_a_flat_capture_is_blank_and_a_page_is_not(tmp_path):
    import io

    from PIL import Image, ImageDraw

    script = _script()

    def png(image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    blank = Image.new("RGB", (400, 300), "white")
    assert script.flat(png(blank))
    page = blank.copy()
    ImageDraw.Draw(page).text((10, 10), "verifiable-local-light  wmtp.recipe: verifiable", fill="black")
    ImageDraw.Draw(page).rectangle((50, 100, 300, 200), fill=(40, 90, 200))
    assert not script.flat(png(page))
    script.save(png(page), tmp_path / "small.png", width=200)
    assert Image.open(tmp_path / "small.png").size == (200, 150)


@pytest.mark.slow
@pytest.mark.skipif(_script().find_browser() is None,
                    reason="no Chromium binary (chromium, chromium-browser, google-chrome): apt-get install -y chromium")
def test_screenshots_of_the_experiment_run_metrics_and_heatmap_pages(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    out = tmp_path / "runs"
    train = cli_command("verifiable", out, "tracking.backends=[jsonl,mlflow]", "train.steps=4", "train.eval_every=2")
    proc = subprocess.run(train, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shots = tmp_path / "shots"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--output-dir", str(out), "--run-dir",
                           str(out / "verifiable-local-light"), "--out", str(shots), "--width", "1000"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.split() == [str(shots / f"{name}.png") for name in PAGES]

    record = json.loads((out / "verifiable-local-light" / "mlflow_run.json").read_text())
    text = {name: (shots / f"{name}.txt").read_text() for name in PAGES}
    # The experiment opens in the model-training view (its runs table), not GenAI's overview.
    assert "verifiable-local-light" in text["experiment"] and "verifiable-local-light-critic" in text["experiment"]
    assert "matching runs" in text["experiment"] and "Traces\n0" not in text["experiment"]
    # The run page: tags with their values, source + git commit, metrics and params.
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for expected in ("wmtp.recipe", "verifiable", "wmtp.preset", "local-light", "wmtp.path", "Finished",
                     record["run_id"], "train/loss", "optim.lr", "stage2.value_weighting.gae_lambda"):
        assert expected in text["run"], expected
    if commit:
        assert commit[:7] in text["run"]
    assert "(train/loss)" in text["metrics"] and "(train/ce_head1)" in text["metrics"]
    assert "(train/grad_norm)" not in text["metrics"]  # the curves alone
    assert "heatmaps/token_weights_step000004.png" in text["heatmap"]

    for name in PAGES:
        path = shots / f"{name}.png"
        image = np.asarray(Image.open(path).convert("RGB"), dtype=float)
        assert image.shape[1] == 1000 and path.stat().st_size < 150_000, name
        # each page waited for its own text before the capture; a rendered page is far from flat
        assert image.std() > 10 and len(np.unique(image.reshape(-1, 3), axis=0)) > 16, name
    heatmap = np.asarray(Image.open(shots / "heatmap.png").convert("RGB"), dtype=int)
    red = (heatmap[..., 0] > 200) & (heatmap[..., 1] < 80) & (heatmap[..., 2] < 80)
    blue = (heatmap[..., 2] > 200) & (heatmap[..., 0] < 80) & (heatmap[..., 1] < 80)
    assert red.sum() + blue.sum() > 500, "the heatmap PNG is not on the page"


def test_the_committed_pictures_are_not_blank():
    from PIL import Image

    script = _script()
    for path in [*(REPO / "docs" / "img" / f"mlflow_{name}.png" for name in PAGES), PROMETHEUS_PICTURE]:
        assert not script.flat(path.read_bytes()) and Image.open(path).width == 1000, path
        assert path.stat().st_size < 150_000, path

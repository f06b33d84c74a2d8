"""The MLflow UI, seen by a real browser: `scripts/mlflow_screenshots.py` on a short run's store.

Slow (a training run, `mlflow ui`, four headless-Chromium page loads) and skipped without a
Chromium (`apt-get install -y chromium`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.recipes.harness import REPO, cli_command, subprocess_env

pytestmark = pytest.mark.slow

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed")
def test_screenshots_of_the_experiment_run_metrics_and_artifacts_pages(tmp_path):
    import numpy as np
    from matplotlib.image import imread

    out = tmp_path / "runs"
    train = cli_command("baseline", out, "tracking.backends=[stdout,jsonl,mlflow]")
    proc = subprocess.run(train, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shots = tmp_path / "shots"
    proc = subprocess.run([sys.executable, "scripts/mlflow_screenshots.py", "--output-dir", str(out),
                           "--out", str(shots)], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("experiment", "run", "metrics", "artifacts"):
        image = imread(shots / f"{name}.png")
        # Each page waited for its own text (run name, tags, metric names, artifact names) before
        # the capture; a rendered page is far from one flat colour.
        assert image.shape[0] >= 900 and float(np.std(image[..., :3])) > 0.05, name

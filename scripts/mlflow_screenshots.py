"""Headless-Chromium screenshots of the MLflow UI pages a wmtp run produces (docs/TRACKING.md).

    python scripts/mlflow_screenshots.py --output-dir runs --out screenshots/
    python scripts/mlflow_screenshots.py --output-dir runs --run-dir runs/verifiable-local-light --out shots/

Serves `mlflow ui` on 127.0.0.1 (a free port) over `<output-dir>/mlflow.db`, then saves
experiment.png (the runs table), run.png (the run's overview: status, tags, params),
metrics.png (the run's model-metrics charts) and artifacts.png (the artifact browser) of the run
recorded in `<run-dir>/mlflow_run.json` (default: the newest run dir under output-dir). Needs a
Chromium (`apt-get install -y chromium`); prints the PNG paths, one per line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PAGES = {
    "experiment": "#/experiments/{exp}",
    "run": "#/experiments/{exp}/runs/{run}",
    "metrics": "#/experiments/{exp}/runs/{run}/model-metrics",
    "artifacts": "#/experiments/{exp}/runs/{run}/artifacts",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("no Chromium found: apt-get install -y chromium")


def serve(db: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{db.resolve()}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mlflow ui exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("mlflow ui did not answer within 120 s")


def screenshot(browser: str, url: str, path: Path, size: str = "1600,1000") -> None:
    with tempfile.TemporaryDirectory(prefix="wmtp-chromium-") as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=15000",
                        f"--screenshot={path}", url], check=True, capture_output=True, timeout=180)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs", help="run.output_dir holding mlflow.db")
    parser.add_argument("--run-dir", default=None, help="a run folder with mlflow_run.json (default: the newest)")
    parser.add_argument("--out", default="screenshots", help="folder for the PNGs")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    db = output_dir / "mlflow.db"
    if not db.is_file():
        sys.exit(f"{db}: no MLflow store (run wmtp train first)")
    records = [Path(args.run_dir) / "mlflow_run.json"] if args.run_dir else \
        sorted(output_dir.glob("*/mlflow_run.json"), key=lambda p: p.stat().st_mtime)
    if not records or not records[-1].is_file():
        sys.exit(f"no mlflow_run.json under {args.run_dir or output_dir}")
    record = json.loads(records[-1].read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    port = free_port()
    proc = serve(db, port)
    try:
        for name, fragment in PAGES.items():
            path = out / f"{name}.png"
            url = f"http://127.0.0.1:{port}/{fragment.format(exp=record['experiment_id'], run=record['run_id'])}"
            screenshot(browser, url, path)
            print(path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

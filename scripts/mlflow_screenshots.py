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
import asyncio
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# page → (URL fragment, text that appears once the page has rendered)
PAGES = {
    "experiment": ("#/experiments/{exp}", "{name}"),
    "run": ("#/experiments/{exp}/runs/{run}", "wmtp.recipe"),
    "metrics": ("#/experiments/{exp}/runs/{run}/model-metrics", "train/loss"),
    "artifacts": ("#/experiments/{exp}/runs/{run}/artifacts", "summary.json"),
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
    deadline = time.monotonic() + 600  # minutes on a busy 2-core machine
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mlflow ui exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            return proc
        except urllib.error.HTTPError:  # an answer, even an error page: the server is up
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("mlflow ui did not answer within 600 s")


def screenshot(browser: str, url: str, path: Path, wait_for: str, size: tuple[int, int] = (1600, 1000),
               timeout: float = 240.0) -> None:
    """Open `url` in headless Chromium, wait until the page's text contains `wait_for` (MLflow's UI
    renders after its API calls return: a screenshot at the load event shows a skeleton), then
    save a PNG. Drives Chromium over the DevTools protocol (aiohttp, which Ray brings along)."""
    asyncio.run(_screenshot(browser, url, path, wait_for, size, timeout))


async def _screenshot(browser: str, url: str, path: Path, wait_for: str, size: tuple[int, int],
                      timeout: float) -> None:
    import aiohttp

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="wmtp-chromium-") as profile:
        proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                 "--hide-scrollbars", f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
                                 "--remote-allow-origins=*", f"--window-size={size[0]},{size[1]}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            async with aiohttp.ClientSession() as http:
                ws_url = None
                while ws_url is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError("Chromium's DevTools endpoint did not come up")
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                            pages = [p for p in await r.json() if p.get("type") == "page"]
                            ws_url = pages[0]["webSocketDebuggerUrl"] if pages else None
                    except (aiohttp.ClientError, OSError):
                        pass
                    await asyncio.sleep(0.5)
                async with http.ws_connect(ws_url, max_msg_size=0) as ws:
                    counter = iter(range(1, 1 << 30))

                    async def call(method: str, **params):
                        msg_id = next(counter)
                        await ws.send_json({"id": msg_id, "method": method, "params": params})
                        while True:
                            msg = await ws.receive_json()
                            if msg.get("id") == msg_id:
                                return msg.get("result", {})

                    await call("Page.navigate", url=url)
                    while True:
                        found = await call("Runtime.evaluate", returnByValue=True,
                                           expression=f"document.body && document.body.innerText.includes({json.dumps(wait_for)})")
                        if found.get("result", {}).get("value"):
                            break
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{url}: {wait_for!r} did not appear within {timeout:.0f} s")
                        await asyncio.sleep(1.0)
                    await asyncio.sleep(3.0)  # charts and tables finish drawing
                    shot = await call("Page.captureScreenshot", format="png")
                    path.write_bytes(base64.b64decode(shot["data"]))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


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
        run_name = records[-1].parent.name
        for name, (fragment, wait_for) in PAGES.items():
            path = out / f"{name}.png"
            url = f"http://127.0.0.1:{port}/{fragment.format(exp=record['experiment_id'], run=record['run_id'])}"
            screenshot(browser, url, path, wait_for.format(name=run_name))
            print(path, flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

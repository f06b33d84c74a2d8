"""Headless-Chromium screenshots of the MLflow UI pages a wmtp run produces (docs/TRACKING.md), and
of Prometheus's graph page of its `ray_wmtp_*` gauges (docs/DASHBOARD.md).

    python scripts/mlflow_screenshots.py --output-dir runs --out screenshots/
    python scripts/mlflow_screenshots.py --output-dir runs --run-dir runs/verifiable-local-light --out shots/
    python scripts/mlflow_screenshots.py --output-dir runs --run-dir runs/verifiable-local-light --out shots/ \
        --prometheus http://127.0.0.1:9090

Serves `mlflow ui` on 127.0.0.1 (a free port) over `<output-dir>/mlflow.db` and opens, in one
headless Chromium driven over the DevTools protocol, the pages of the run recorded in
`<run-dir>/mlflow_run.json` (default: the newest run dir under output-dir), in MLflow's
model-training view:

    experiment.png  the experiment's runs table
    run.png         the run's overview: status, source + git commit, tags, metrics, params
    metrics.png     the run's training curves: loss and each head's CE, train and validation (`CURVES`)
    heatmap.png     the newest token-weight heatmap PNG in the artifact browser (weighted recipes)
    prometheus.png  with --prometheus URL: that Prometheus's graph page of the run's gauges
                    (`GAUGE_PANELS`, one line per rank) over the run's time window; it must have
                    scraped the run's cluster while the run was live (DASHBOARD.md: Ray's own
                    session config). --no-mlflow shoots this page alone.

Each page is captured once its text shows what it must (the run name, the tag values, the metric
names, the heatmap's file name, the gauges of both ranks) and saved with that text beside it
(`<page>.txt`, the page's `innerText`). A capture of one flat colour (a blank or unrendered page)
is an error. `--width` downscales the saved PNGs (the docs keep small ones). Needs a Chromium
(`apt-get install -y chromium`); prints the PNG paths, one per line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# MLflow >= 3.17 opens the GenAI view unless asked (wmtp.tracking.console.MODEL_TRAINING_VIEW).
VIEW = "?workflowType=machine_learning"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_browser() -> str | None:
    return next((found for found in map(shutil.which, BROWSERS) if found), None)


def stop(proc: subprocess.Popen) -> None:
    """End a process this script started in its own session, with everything it spawned (its
    process group: Chromium's renderers, the server's workers), politely first."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group once its leader is gone
    except ProcessLookupError:
        pass


def serve(db: Path, port: int, timeout: float) -> subprocess.Popen:
    """`mlflow ui` over the SQLite store `db` on 127.0.0.1:`port`, once it answers its API."""
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{db.resolve()}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            # no background job runners (judges, optimisers): a read-only UI
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + timeout  # ~30 s quiet; minutes on a busy 2-core machine
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mlflow ui exited with {proc.returncode}")
        try:
            api(port, "experiments/search?max_results=1")
            return proc
        except OSError:
            time.sleep(0.5)
    stop(proc)
    sys.exit(f"mlflow ui did not answer within {timeout:.0f} s")


def api(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/{path}", timeout=30) as r:
        return json.load(r)


def newest_heatmap(port: int, run_id: str) -> str | None:
    """Artifact path of the run's last `heatmaps/*.png` (step-numbered names sort by step)."""
    query = urllib.parse.urlencode({"run_id": run_id, "path": "heatmaps"})
    files = api(port, f"artifacts/list?{query}").get("files", [])
    pngs = sorted(f["path"] for f in files if f["path"].endswith(".png"))
    return pngs[-1] if pngs else None


def flat(png: bytes) -> bool:
    """True when the image is (nearly) one colour: a blank or unrendered page."""
    import io

    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("L")
    return max(ImageStat.Stat(image).stddev) < 2.0 or len(image.getcolors(1 << 16) or range(1 << 16)) < 4


def save(png: bytes, path: Path, width: int | None) -> None:
    """Write `png`, downscaled to `width` pixels and quantised to 256 colours when `width` is set."""
    if not width:
        path.write_bytes(png)
        return
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


class Browser:
    """One headless Chromium tab driven over the DevTools protocol (aiohttp, which Ray brings)."""

    def __init__(self, executable: str, size: tuple[int, int]):
        self.executable, self.size = executable, size

    async def __aenter__(self) -> Browser:
        import aiohttp

        self._profile = tempfile.TemporaryDirectory(prefix="wmtp-chromium-")
        port = free_port()
        self.proc = subprocess.Popen(
            [self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--hide-scrollbars", "--no-first-run", f"--user-data-dir={self._profile.name}",
             f"--remote-debugging-port={port}", "--remote-allow-origins=*",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.http = aiohttp.ClientSession()
        deadline = time.monotonic() + 120
        ws_url = None
        while ws_url is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Chromium's DevTools endpoint did not come up")
            try:
                async with self.http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [p for p in await r.json() if p.get("type") == "page"]
                    ws_url = pages[0]["webSocketDebuggerUrl"] if pages else None
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.5)
        self.ws = await self.http.ws_connect(ws_url, max_msg_size=0)
        self._ids = iter(range(1, 1 << 30))
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self.ws.close()
            await self.http.close()
        finally:
            stop(self.proc)
            self._profile.cleanup()

    async def call(self, method: str, **params) -> dict:
        msg_id = next(self._ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def capture(self, url: str, expect: list[str], timeout: float, ready: str = "true") -> tuple[bytes, str]:
        """Open `url`, wait until the page's text contains every string of `expect` and the JS
        expression `ready` holds (MLflow's UI renders after its API calls return: a capture at the
        load event shows a skeleton), then return (PNG bytes, the page's text)."""
        await self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        check = (f"(() => {{ const t = document.body ? document.body.innerText : '';"
                 f" return {json.dumps(expect)}.filter(s => !t.includes(s)).concat(({ready}) ? [] : ['<ready>']); }})()")
        while True:
            missing = await self.js(check)
            if missing == []:
                break
            if time.monotonic() > deadline:
                images = await self.js("[...document.images].map(i => `${i.src.slice(0, 60)} ${i.naturalWidth}`)")
                raise TimeoutError(f"{url}: {missing} not on the page within {timeout:.0f} s (images: {images})")
            await asyncio.sleep(1.0)
        # The assistant side panel opens itself on a fresh profile; close it (it hides the page).
        await self.js("document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')?.click()")
        await asyncio.sleep(3.0)  # charts and tables finish drawing, the panel closes
        shot = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"]), await self.js("document.body.innerText")


# The metrics page shows the training curves alone: the run's loss and per-head CE charts, train and
# validation (MLflow's chart search is a case-insensitive regular expression over metric keys).
CURVES = r"^(train|val)/(loss|ce_head\d+)$"
# Types `pattern` into the chart search box (React sees the input event); true once the page draws
# exactly `want` charts.
SEARCH_CHARTS = """((pattern, want) => {
  const box = document.querySelector('input[placeholder="Search metric charts"]');
  if (!box) return false;
  if (box.value !== pattern) {
    Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(box, pattern);
    box.dispatchEvent(new Event('input', {bubbles: true}));
    return false;
  }
  return document.querySelectorAll('.js-plotly-plot').length === want;
})"""


def curve_keys(metric_keys) -> list[str]:
    """The metric keys the metrics page charts (`CURVES`), e.g. train/loss, train/ce_head1, val/ce_head2."""
    return sorted(k for k in metric_keys if re.match(CURVES, k, re.I))


def pages(record: dict, run_name: str, tags: dict[str, str], heatmap: str | None,
          metric_keys=("train/loss",)) -> dict:
    """page → (URL fragment, texts the rendered page must show, JS readiness test, window height)."""
    exp, run = record["experiment_id"], record["run_id"]
    tag_texts = [tags[k] for k in ("wmtp.recipe", "wmtp.preset") if k in tags]
    commit = tags.get("mlflow.source.git.commit", "")[:7]
    curves = curve_keys(metric_keys)
    out = {
        "experiment": (f"#/experiments/{exp}{VIEW}", [run_name, "matching runs"], "true", 700),
        "run": (f"#/experiments/{exp}/runs/{run}{VIEW}", [run_name, "wmtp.recipe", *tag_texts,
                                                           *([commit] if commit else []), "train/loss"], "true", 1500),
        # Only the curves (`CURVES`): loss and each head's CE, train above validation, all in view.
        "metrics": (f"#/experiments/{exp}/runs/{run}/model-metrics{VIEW}",
                    [run_name, *(f"({k})" for k in curves)],
                    f"{SEARCH_CHARTS}({json.dumps(CURVES)}, {len(curves)})", 1000),
    }
    if heatmap:
        name = heatmap.rsplit("/", 1)[-1]
        out["heatmap"] = (f"#/experiments/{exp}/runs/{run}/artifacts/{heatmap}{VIEW}", [run_name, name],
                          # the artifact viewer shows the PNG as an <img> (a blob: or get-artifact URL)
                          "[...document.images].some(i => i.complete && i.naturalWidth >= 400)", 700)
    return out


# The Prometheus graph page of wmtp's gauges (docs/DASHBOARD.md): one panel per series, one line
# per rank, over the run's time window. What the Ray dashboard's Metrics page shows through Grafana
# (cluster/grafana/wmtp_dashboard.json), here straight from Prometheus's own (classic) UI.
# The Prometheus page: first a table of every wmtp series of the run at its end (one row per
# gauge and rank), then graphs over the run's time window, one line per rank. What the Ray
# dashboard's Metrics page shows through Grafana (cluster/grafana/wmtp_dashboard.json), here from
# Prometheus's own (classic) UI. It draws each graph 400 px tall: 1000 px wide keeps it readable.
PAGE_WIDTH = {"prometheus": 1000}
GAUGE_TABLE = 'max by (__name__, rank) ({{__name__=~"ray_wmtp_.*",run="{run}"}})'
GAUGE_PANELS = ("ray_wmtp_loss", "ray_wmtp_tokens_per_s")


def run_window(run_dir: Path) -> tuple[float, int]:
    """(end, minutes) of the run: when it ended (its summary.json, written last; else now, as a
    Unix time) and its wall time in minutes, rounded up, plus one (else 15 minutes)."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return time.time(), 15
    return summary.stat().st_mtime, int(json.loads(summary.read_text()).get("wall_s", 840) // 60) + 2


def prometheus_page(url: str, end: float, minutes: int, run_name: str) -> tuple[str, list[str], str, int]:
    """(URL, texts, JS readiness test, window height) of Prometheus's graph page for `run_name`:
    `GAUGE_TABLE` at the run's end, then `GAUGE_PANELS` as `max by (rank)` (one line per rank, a
    short legend: Ray's own labels, WorkerId, SessionName, ..., would fill the page) up to a minute
    after it."""
    query = {"g0.expr": GAUGE_TABLE.format(run=run_name), "g0.tab": "1",
             "g0.moment_input": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(end))}
    for i, name in enumerate(GAUGE_PANELS, start=1):
        query.update({f"g{i}.expr": f'max by (rank) ({name}{{run="{run_name}"}})', f"g{i}.tab": "0",
                      f"g{i}.stacked": "0", f"g{i}.range_input": f"{minutes}m",
                      f"g{i}.end_input": time.strftime("%Y-%m-%d %H:%M", time.gmtime(end + 60))})
    # the table has its rows and every graph its lines (Rickshaw: an svg path per series) and a
    # legend of two ranks; back at the top (the page scrolls to the last expression box, which
    # takes the focus)
    n = len(GAUGE_PANELS)
    ready = ("document.querySelectorAll('.console_table tr').length > 2"
             f" && document.querySelectorAll('.graph_area svg path').length >= {2 * n}"
             f" && document.querySelectorAll('.legend .line').length >= {2 * n}"
             " && (document.activeElement.blur(), window.scrollTo(0, 0), window.scrollY === 0)")
    return (f"{url.rstrip('/')}/graph?{urllib.parse.urlencode(query)}",
            [*GAUGE_PANELS, "ray_wmtp_weight_std", "ray_wmtp_critic_staleness", 'rank="0"', 'rank="1"'],
            ready, 720 * n + 900)


async def shoot(browser: str, port: int | None, record: dict | None, run_name: str, out: Path, width: int | None,
                timeout: float, prometheus: tuple[str, str, int] | None = None) -> list[Path]:
    """The MLflow pages (when `port` serves the store) and the Prometheus page (`prometheus`: URL,
    end time, minutes; `prometheus_page`)."""
    todo = {}
    if port is not None and record is not None:
        run = api(port, f"runs/get?run_id={record['run_id']}")["run"]
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        keys = [m["key"] for m in run["data"].get("metrics", [])]
        todo = {name: (f"http://127.0.0.1:{port}/{fragment}", *rest) for name, (fragment, *rest)
                in pages(record, run_name, tags, newest_heatmap(port, record["run_id"]), keys).items()}
    if prometheus is not None:
        todo["prometheus"] = prometheus_page(*prometheus, run_name)
    saved = []
    async with Browser(browser, (1600, 1000)) as tab:
        for name, (url, expect, ready, height) in todo.items():
            await tab.call("Emulation.setDeviceMetricsOverride", width=PAGE_WIDTH.get(name, 1600), height=height,
                           deviceScaleFactor=1, mobile=False)
            png, text = await tab.capture(url, expect, timeout, ready)
            saved.append(keep(name, png, text, out, width))
    return saved


def keep(name: str, png: bytes, text: str, out: Path, width: int | None) -> Path:
    """Check a capture is not blank, then save it and its page text."""
    if flat(png):
            raise RuntimeError(f"{name}: the capture is one flat colour (the page did not render)")
    path = out / f"{name}.png"
    save(png, path, width)
    (out / f"{name}.txt").write_text(text)
    print(path, flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs", help="run.output_dir holding mlflow.db")
    parser.add_argument("--run-dir", default=None, help="a run folder with mlflow_run.json (default: the newest)")
    parser.add_argument("--out", default="screenshots", help="folder for the PNGs and their page texts")
    parser.add_argument("--width", type=int, default=None, help="downscale the PNGs to this width (pixels)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per page and for the server start")
    parser.add_argument("--prometheus", default=None, metavar="URL",
                        help="also shoot this Prometheus's graph page of the run's ray_wmtp_* gauges (prometheus.png)")
    parser.add_argument("--no-mlflow", action="store_true", help="only the Prometheus page (no mlflow ui)")
    args = parser.parse_args(argv)
    if args.no_mlflow and not args.prometheus:
        sys.exit("--no-mlflow leaves nothing to shoot without --prometheus URL")
    output_dir = Path(args.output_dir)
    db = output_dir / "mlflow.db"
    if args.no_mlflow:  # the run's folder names the run (the gauges' `run` tag) and its time window
        runs = [Path(args.run_dir)] if args.run_dir else \
            sorted((p.parent for p in output_dir.glob("*/config.yaml")), key=lambda p: p.stat().st_mtime)
        if not runs or not runs[-1].is_dir():
            sys.exit(f"no run folder under {args.run_dir or output_dir}")
        run_dir, record = runs[-1], None
    else:
        if not db.is_file():
            sys.exit(f"{db}: no MLflow store (run wmtp train with tracking.backends including mlflow first)")
        records = [Path(args.run_dir) / "mlflow_run.json"] if args.run_dir else \
            sorted(output_dir.glob("*/mlflow_run.json"), key=lambda p: p.stat().st_mtime)
        if not records or not records[-1].is_file():
            sys.exit(f"no mlflow_run.json under {args.run_dir or output_dir}")
        run_dir, record = records[-1].parent, json.loads(records[-1].read_text())
    browser = find_browser()
    if browser is None:
        sys.exit(f"no Chromium found (looked for {', '.join(BROWSERS)}): apt-get install -y chromium")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prometheus = (args.prometheus, *run_window(run_dir)) if args.prometheus else None
    port = None if args.no_mlflow else free_port()
    proc = None if port is None else serve(db, port, args.timeout)
    try:
        asyncio.run(shoot(browser, port, record, run_dir.name, out, args.width, args.timeout, prometheus))
    finally:
        if proc is not None:
            stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

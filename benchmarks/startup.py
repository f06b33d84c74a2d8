"""Where the wall time of a short run goes: the Ray path's phases next to the in-process run.

Runs the local-light baseline through the CLI twice, back to back, in fresh processes and fresh
output folders: `wmtp train --local` (in-process) and `wmtp train` (a local Ray cluster, 2 workers).
Each run writes `<run_dir>/summary.json` with its wall time by phase (cluster start, worker start,
setup = data + models, steps, validation, checkpoints, export, shutdown); the table puts them
side by side, with the process's own wall time (imports and interpreter start included).

    python benchmarks/startup.py                      # 20 steps each: ~5-10 min on 2 cores at load 20
    python benchmarks/startup.py --steps 150          # the full local-light budget
    python benchmarks/startup.py --paths ray          # the Ray path alone (A/B repeats)

Fixed overhead = process wall time − time in steps, validation, checkpoints and export (the work
both paths share). Last line: `ray_fixed_overhead_s: X` (Ray's fixed overhead − in-process's), or
`ray_fixed_s: X` with `--paths ray`. The load average before and after is printed: on a shared
machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = ("steps", "validation", "checkpoints", "export")


def run(path: str, steps: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "wmtp", "train", "--recipe", "configs/recipe.baseline.yaml", "--preset",
           "local-light", f"train.steps={steps}", f"run.output_dir={out}", "run.name=startup"]
    if path == "local":
        cmd.insert(4, "--local")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    # The Ray run's session files in a short private folder: Ray's sockets live there and AF_UNIX
    # paths stop at 107 bytes (a deep TMPDIR, e.g. pytest's, is too long).
    ray_tmp = tempfile.mkdtemp(prefix="wsu", dir="/tmp") if path == "ray" else None
    if ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    finally:
        if ray_tmp:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode != 0:
        sys.exit(f"{path} run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "startup" / "summary.json").read_text())
    phases = dict(summary["phases_s"])
    phases["process"] = wall
    phases["fixed"] = wall - sum(phases.get(k, 0.0) for k in WORK)
    return phases


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--paths", nargs="+", choices=["local", "ray"], default=["local", "ray"])
    args = parser.parse_args()
    print(f"loadavg before: {loadavg()}", flush=True)
    results = {}
    for path in args.paths:
        with tempfile.TemporaryDirectory(prefix=f"wmtp-startup-{path}-") as tmp:
            results[path] = run(path, args.steps, Path(tmp))
    print(f"loadavg after: {loadavg()}")
    paths = [p for p in ("local", "ray") if p in results]
    names = list(dict.fromkeys(k for p in reversed(paths) for k in results[p]))
    print(f"baseline local-light, {args.steps} steps, {os.cpu_count()} CPUs")
    titles = {"local": "in-process", "ray": "ray"}
    print(f"{'phase':<14}" + "".join(f" {titles[p]:>11}" for p in paths))
    for name in names:
        cells = [f"{results[p][name]:.1f}s" if name in results[p] else "-" for p in paths]
        print(f"{name:<14}" + "".join(f" {c:>11}" for c in cells))
    if paths == ["local", "ray"]:
        print(f"ray_fixed_overhead_s: {results['ray']['fixed'] - results['local']['fixed']:.1f}")
    else:
        print(f"{paths[0]}_fixed_s: {results[paths[0]]['fixed']:.1f}")


if __name__ == "__main__":
    main()

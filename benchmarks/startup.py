"""Where the wall time of a short run goes: the Ray path's phases next to the in-process run.

Runs the local-light baseline through the CLI twice, back to back, in fresh processes and fresh
output folders: `wmtp train --local` (in-process) and `wmtp train` (a local Ray cluster, 2 workers).
Each run writes `<run_dir>/summary.json` with its wall time by phase (cluster start, worker start,
setup = data + models, steps, validation, checkpoints, export, shutdown); the table puts them
side by side, with the process's own wall time (imports and interpreter start included).

    python benchmarks/startup.py                      # 20 steps each: ~3-5 min on 2 busy cores
    python benchmarks/startup.py --steps 150          # the full local-light budget

Fixed overhead = process wall time − time in steps, validation, checkpoints and export (the work
both paths share). Last line: `ray_fixed_overhead_s: X` (Ray's fixed overhead − in-process's).
"""

from __future__ import annotations

import argparse
import json
import os
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
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{path} run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "startup" / "summary.json").read_text())
    phases = dict(summary["phases_s"])
    phases["process"] = wall
    phases["fixed"] = wall - sum(phases.get(k, 0.0) for k in WORK)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    results = {}
    for path in ("local", "ray"):
        with tempfile.TemporaryDirectory(prefix=f"wmtp-startup-{path}-") as tmp:
            results[path] = run(path, args.steps, Path(tmp))
    names = list(dict.fromkeys([*results["ray"], *results["local"]]))
    print(f"baseline local-light, {args.steps} steps, {os.cpu_count()} CPUs")
    print(f"{'phase':<14} {'in-process':>11} {'ray':>9}")
    for name in names:
        cells = [f"{results[p][name]:.1f}s" if name in results[p] else "-" for p in ("local", "ray")]
        print(f"{name:<14} {cells[0]:>11} {cells[1]:>9}")
    print(f"ray_fixed_overhead_s: {results['ray']['fixed'] - results['local']['fixed']:.1f}")


if __name__ == "__main__":
    main()

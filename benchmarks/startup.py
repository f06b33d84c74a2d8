"""Where the wall time of a short run goes: the Ray path's phases next to the in-process run.

Runs the local-light baseline through the CLI twice, back to back, in fresh processes and fresh
output folders: `wmtp train --local` (in-process) and `wmtp train` (a local Ray cluster, 2 workers).
Each run writes `<run_dir>/summary.json` with its wall time by phase (cluster start, worker start,
setup = data + models, steps, validation, checkpoints, export, shutdown); the table puts them
side by side, with the process's own wall time (imports and interpreter start included).

    python benchmarks/startup.py --steps 10           # 3 rounds of both paths: ~6-8 min on 2 idle cores
    python benchmarks/startup.py --steps 150          # the full local-light budget
    python benchmarks/startup.py --paths ray          # the Ray path alone (A/B repeats)
    python benchmarks/startup.py --main-job           # the README's main job, once (~4 min on 2 cores)

Fixed overhead = process wall time − time in steps, validation, checkpoints and export (the work
both paths share). The paths run round-robin `--repeats` times (the order rotates each round);
the table shows each phase's median over rounds. Last line: `ray_fixed_overhead_s: X`, the median
over rounds of (Ray's fixed overhead − in-process's, same round), or `ray_fixed_s: X` with
`--paths ray`. The load average before and after is printed: on a shared machine the figures move
with it.

`--main-job` times the README's main job instead, as a new user runs it: `wmtp train --recipe
configs/recipe.verifiable.yaml --preset local-light` in a fresh output folder (so the chained critic
stage runs first, then the verifiable policy on its local Ray cluster), with the preset's steps
unless `--steps` is given. It prints each stage's phases and ends with `main_job_s: X`, the
process's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import _common as bench  # noqa: E402

WORK = ("steps", "validation", "checkpoints", "export")


def timed_wmtp(cmd: list[str], *, ray: bool, what: str) -> float:
    """Run a `wmtp` command as a user would (telemetry off); its process wall time in seconds, or
    exit naming `what` with the end of its output. `ray`: the run's session files in a short private
    folder (Ray's sockets live there and AF_UNIX paths stop at 107 bytes; a deep TMPDIR, e.g.
    pytest's, is too long), removed afterwards."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    ray_tmp = tempfile.mkdtemp(prefix="wsu", dir="/tmp") if ray else None
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
        sys.exit(f"{what} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall


def run(path: str, steps: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "wmtp", "train", "--recipe", "configs/recipe.baseline.yaml", "--preset",
           "local-light", f"train.steps={steps}", f"run.output_dir={out}", "run.name=startup"]
    if path == "local":
        cmd.insert(4, "--local")
    wall = timed_wmtp(cmd, ray=path == "ray", what=f"{path} run")
    summary = json.loads((out / "startup" / "summary.json").read_text())
    phases = dict(summary["phases_s"])
    phases["process"] = wall
    phases["fixed"] = wall - sum(phases.get(k, 0.0) for k in WORK)
    return phases


MAIN_JOB = ["train", "--recipe", "configs/recipe.verifiable.yaml", "--preset", "local-light"]
MAIN_STAGES = {"verifiable-local-light-critic": "critic", "verifiable-local-light": "policy"}  # run → title


def main_job(steps: int | None) -> None:
    """The README's main job once in a fresh output folder: each stage's phases, the process's wall."""
    with tempfile.TemporaryDirectory(prefix="wmtp-main-job-") as tmp:
        out = Path(tmp)
        cmd = [sys.executable, "-m", "wmtp", *MAIN_JOB, f"run.output_dir={out}",
               *([f"train.steps={steps}"] if steps else [])]
        wall = timed_wmtp(cmd, ray=True, what="main job")
        summaries = {name: json.loads((out / name / "summary.json").read_text()) for name in MAIN_STAGES}
    print(f"loadavg after: {bench.loadavg()}")
    print(f"wmtp {' '.join(MAIN_JOB)}" + (f" train.steps={steps}" if steps else "") + f", {os.cpu_count()} CPUs")
    phases = list(dict.fromkeys(k for s in reversed(summaries.values()) for k in s["phases_s"]))  # the cluster's first
    print(f"{'phase':<14}" + "".join(f" {title:>9}" for title in MAIN_STAGES.values()))
    for phase in [*phases, "wall_s"]:
        cells = [s["phases_s"].get(phase) if phase != "wall_s" else s["wall_s"] for s in summaries.values()]
        print(f"{phase:<14}" + "".join(f" {'-' if c is None else f'{c:.1f}s':>9}" for c in cells))
    for name, s in summaries.items():
        print(f"{name}: {s['step']} steps, tokens/s {s['final'].get('perf/tokens_per_s', float('nan')):.0f}, "
              f"train/loss {s['final'].get('train/loss', s['final'].get('train/value_loss', float('nan'))):.3f}")
    print(f"process wall (imports, both stages, the cluster's start and stop): {wall:.1f}s")
    print(f"main_job_s: {wall:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 20; --main-job: the preset's)")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin rounds over the paths")
    parser.add_argument("--paths", nargs="+", choices=["local", "ray"], default=["local", "ray"])
    parser.add_argument("--main-job", action="store_true", help="time the README's main job once instead")
    args = parser.parse_args()
    bench.print_header("startup", {"ray": bench.version("ray")})
    if args.main_job:
        main_job(args.steps)
        return
    args.steps = args.steps or 20
    order = [p for p in ("local", "ray") if p in args.paths]
    rounds: list[dict[str, dict]] = []
    for r in range(args.repeats):
        results = {}
        for path in bench.rotated(order, r):
            with tempfile.TemporaryDirectory(prefix=f"wmtp-startup-{path}-") as tmp:
                results[path] = run(path, args.steps, Path(tmp))
            print(f"round {r} {path}: fixed {results[path]['fixed']:.1f}s, process {results[path]['process']:.1f}s "
                  f"(load {bench.loadavg()})", flush=True)
        rounds.append(results)
    print(f"loadavg after: {bench.loadavg()}")
    names = list(dict.fromkeys(k for p in reversed(order) for k in rounds[0][p]))
    print(f"baseline local-light, {args.steps} steps, {os.cpu_count()} CPUs; median over {args.repeats} rounds")
    titles = {"local": "in-process", "ray": "ray"}
    print(f"{'phase':<14}" + "".join(f" {titles[p]:>11}" for p in order))
    for name in names:
        cells = [f"{statistics.median(x[p][name] for x in rounds):.1f}s" if name in rounds[0][p] else "-"
                 for p in order]
        print(f"{name:<14}" + "".join(f" {c:>11}" for c in cells))
    if order == ["local", "ray"]:
        s = bench.summarize([x["ray"]["fixed"] - x["local"]["fixed"] for x in rounds])
        print(f"ray fixed − in-process fixed per round: median {s['median']:.1f}s, "
              f"min–max {s['min']:.1f}–{s['max']:.1f}s (n={s['n']})")
        print(f"ray_fixed_overhead_s: {s['median']:.1f}")
    else:
        s = bench.summarize([x[order[0]]["fixed"] for x in rounds])
        print(f"{order[0]} fixed per round: min–max {s['min']:.1f}–{s['max']:.1f}s (n={s['n']})")
        print(f"{order[0]}_fixed_s: {s['median']:.1f}")


if __name__ == "__main__":
    main()

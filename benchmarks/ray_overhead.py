"""Step time of the micro baseline recipe under a 1-worker Ray Train TorchTrainer vs the same steps
in a bare in-process loop, run back to back (docs/BENCHMARKS.md; target ≤ 1.05, docs/DISTRIBUTED.md).

Both paths run the same recipe code (`wmtp.recipes.build_recipe`) on the same config; the only
difference is the seams (Ray's logger/sink/report cadence vs local ones) and the process. Step time
= time between consecutive per-step `log_metrics` calls (log_every=1), steady state only: the first
`--warmup` steps and the last step (validation + checkpoint) are dropped; the median is reported.
The Ray worker gets `cpus_per_worker` CPUs, and Ray pins its torch threads to that; the bare loop
uses the same thread count.

Rounds alternate which path goes first (round r runs bare, Ray when r is even, Ray, bare when
odd). Each round gives a ratio (that round's Ray median step ÷ its bare median step), so minutes
of a busy machine fall on both sides of one ratio; the figure is the median of the rounds' ratios,
printed with their min–max.

    python benchmarks/ray_overhead.py                 # ~4-6 min on 2 CPU cores
    python benchmarks/ray_overhead.py --steps 100 --rounds 5

Last line: `ray_overhead_ratio: X` (median over rounds of Ray median step ÷ bare median step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench  # noqa: E402


class TimedLogger:
    """Forwards to `inner` and stamps the first `log_metrics` call of each step (perf_counter)."""

    def __init__(self, inner: Any, record: Path) -> None:
        self.inner, self.record = inner, record
        self.stamps: dict[int, float] = {}

    def log_params(self, params):
        self.inner.log_params(params)

    def log_metrics(self, metrics, step):
        self.stamps.setdefault(int(step), time.perf_counter())
        self.inner.log_metrics(metrics, step)

    def log_artifact(self, local_path, artifact_path=None):
        self.inner.log_artifact(local_path, artifact_path)

    def close(self):
        self.inner.close()

    def save(self) -> None:
        import torch

        self.record.write_text(json.dumps({"stamps": self.stamps, "threads": torch.get_num_threads()}))


class TimedRecipe:
    """The recipe, plus writing the step stamps when it closes (the caller owns the logger)."""

    def __init__(self, recipe: Any, timer: TimedLogger | None) -> None:
        self.recipe, self.timer = recipe, timer

    def setup(self):
        self.recipe.setup()

    def train(self):
        return self.recipe.train()

    def close(self):
        self.recipe.close()
        if self.timer is not None:
            self.timer.save()


class TimedRecipeBuilder:
    """`build_recipe` with a `TimedLogger` around whatever logger the caller passes (rank 0 records)."""

    def __init__(self, record: str) -> None:
        self.record = record

    def __call__(self, cfg, *, logger, checkpoint_sink, scorer_factory=None):
        import torch.distributed as dist

        from wmtp.recipes import build_recipe

        rank = dist.get_rank() if dist.is_initialized() else 0
        timer = TimedLogger(logger, Path(self.record)) if rank == 0 else None
        recipe = build_recipe(cfg, logger=timer or logger, checkpoint_sink=checkpoint_sink,
                              scorer_factory=scorer_factory)
        return TimedRecipe(recipe, timer)


def step_times(record: Path, warmup: int) -> tuple[list[float], int]:
    data = json.loads(record.read_text())
    stamps = sorted((int(k), v) for k, v in data["stamps"].items())
    # Duration of step s = stamp(s) − stamp(s−1); drop warm-up and the final (eval + checkpoint) step.
    durations = [b[1] - a[1] for a, b in zip(stamps, stamps[1:]) if b[0] > warmup]
    return durations[:-1] if len(durations) > 1 else durations, data["threads"]


def bench_config(out: Path, name: str, steps: int, *overrides: str, recipe: str = "baseline"):
    from wmtp.config.loader import load_config

    return load_config("configs/defaults.yaml", recipe, None, True, [
        f"run.output_dir={out}", f"run.name={name}", f"train.steps={steps}", f"train.eval_every={steps}",
        "train.eval_batches=1", f"train.checkpoint_every={steps}", "train.log_every=1", "train.heatmap_samples=0",
        "tracking.backends=[]", "orchestration.num_workers=1", "orchestration.max_failures=0", *overrides])


def run_bare(cfg, record: Path) -> None:
    """The recipe in this process with local seams (what `wmtp train --local` runs)."""
    import torch

    from wmtp.checkpoint import LocalCheckpointSink
    from wmtp.config.paths import run_dir
    from wmtp.tracking import NullLogger

    torch.set_num_threads(max(1, int(cfg.orchestration.cpus_per_worker)))
    logger = NullLogger()
    recipe = TimedRecipeBuilder(str(record))(cfg, logger=logger,
                                             checkpoint_sink=LocalCheckpointSink(run_dir(cfg), keep=1))
    try:
        recipe.setup()
        recipe.train()
    finally:
        recipe.close()
        logger.close()


def run_on_ray(cfg, record: Path) -> None:
    from wmtp.orchestration.launch import run_training

    run_training(cfg, recipe_builder=TimedRecipeBuilder(str(record)))


def start_ray(num_cpus: int) -> None:
    import ray

    from wmtp.orchestration.ray_runtime import apply_train_env

    apply_train_env()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        # address="local": always a fresh cluster (a stale one left by `ray stop` would hang init),
        # in a private temp dir (short path: Ray's unix sockets) so other clusters on the machine
        # are left alone.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4, help="bare/Ray pairs; the first path alternates")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=None, help="run folder (default: a temp dir)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="wmtp-ray-overhead-"))
    bench.print_header("ray_overhead", {"ray": bench.version("ray")})
    start_ray(num_cpus=max(2, os.cpu_count() or 2))
    medians: dict[str, list[float]] = {"bare": [], "ray": []}
    paths = [("bare", run_bare), ("ray", run_on_ray)]
    for r in range(args.rounds):
        for path, runner in bench.rotated(paths, r):
            cfg = bench_config(out, f"{path}-{r}", args.steps, f"data.batch_size={args.batch_size}",
                               "orchestration.cpus_per_worker=1")
            record = out / f"{path}-{r}.json"
            runner(cfg, record)
            times, threads = step_times(record, args.warmup)
            medians[path].append(statistics.median(times))
            print(f"round {r} {path:4s}: median step {medians[path][-1] * 1e3:8.2f} ms over "
                  f"{len(times)} steps (torch threads {threads}; load {bench.loadavg()})", flush=True)
    print(f"loadavg after: {bench.loadavg()}")
    for path in ("bare", "ray"):
        s = bench.summarize(medians[path])
        print(f"{path:4s} median of round medians {s['median'] * 1e3:.2f} ms "
              f"(min–max {s['min'] * 1e3:.2f}–{s['max'] * 1e3:.2f}, n={s['n']})")
    r = bench.summarize(bench.paired_ratios(medians["ray"], medians["bare"]))
    print(f"ray ÷ bare per round: median {r['median']:.3f}, IQR {r['q1']:.3f}–{r['q3']:.3f}, "
          f"min–max {r['min']:.3f}–{r['max']:.3f}")
    print(f"ray_overhead_ratio: {r['median']:.3f}")
    return 0


if __name__ == "__main__":  # the data pipeline may spawn processes that re-import this file
    raise SystemExit(main())

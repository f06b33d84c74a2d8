"""Learner step time of the verifiable recipe with the experience phase `async` (Ray experience
actors scoring ahead) vs `colocated` (in the learner), vs the baseline recipe (no critic at all);
all in a 1-worker Ray Train TorchTrainer on the micro preset (docs/BENCHMARKS.md: verifiable with a
frozen critic and async experience ≤ 1.10 × baseline, on GPU).

Configurations (same data, batch and steps):
  baseline                      no critic
  verifiable colocated frozen   critic forward + GAE in the learner, value loss off
  verifiable async frozen       critic forward + GAE in an experience actor, queue_depth ahead
  verifiable async learning     value loss on, critic published every step (sync interval 1)
What the CPU figure measures: the learner runs with one torch thread (`cpus_per_worker=1`) and
the experience actor gets a CPU of its own, so on an otherwise idle 2-core machine async moves
the critic forward onto the second, idle core. It shows that the pipelining works and what it
costs in the learner (queueing, weight publishes), not that a critic's compute is hidden on a busy
device: on a loaded machine there is no idle core and the ratio rises toward the colocated one.

The configurations run round-robin, `--rounds` times (the order rotates each round); each run
gives its median steady-state step; the ratios are per round (config ÷ the baseline of the same
round), reported as median and min–max.

    python benchmarks/experience_overlap.py             # ~4-5 min on 2 idle CPU cores

Last line: `verifiable_async_frozen_over_baseline: X` (median over rounds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench  # noqa: E402
import ray_overhead as timing  # noqa: E402  (sibling benchmark: the timed recipe wrapper)

CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "baseline": ("baseline", ()),
    "verifiable_colocated_frozen": ("verifiable", ("orchestration.placement=colocated",
                                                   "stage2.value_loss.enabled=false")),
    "verifiable_async_frozen": ("verifiable", ("orchestration.placement=async", "stage2.value_loss.enabled=false")),
    "verifiable_async_learning": ("verifiable", ("orchestration.placement=async", "stage2.critic_sync_interval=1")),
}


def make_critic(out: Path, batch_size: int) -> str:
    """A micro critic from the `critic` recipe (a few steps, in this process)."""
    from wmtp.config.paths import export_dir
    from wmtp.recipes import run_recipe
    from wmtp.tracking import NullLogger

    cfg = timing.bench_config(out, "critic", 4, f"data.batch_size={batch_size}", "orchestration.enabled=false",
                              recipe="critic")
    run_recipe(cfg, make_logger=lambda _cfg: NullLogger())
    return str(export_dir(cfg))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="round-robin passes over the configurations")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--queue-depth", type=int, default=2)
    parser.add_argument("--configs", nargs="*", default=["baseline", "verifiable_colocated_frozen",
                                                         "verifiable_async_frozen"], choices=list(CONFIGS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="wmtp-experience-overlap-"))
    bench.print_header("experience_overlap", {})
    timing.start_ray(num_cpus=4)
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(timing)
    critic = make_critic(out, args.batch_size)
    per_run: dict[str, list[float]] = {n: [] for n in args.configs}
    names = list(args.configs)
    for r in range(args.rounds):
        for name in bench.rotated(names, r):
            recipe, overrides = CONFIGS[name]
            cfg = timing.bench_config(out, f"{name}-{r}", args.steps, *overrides, f"data.batch_size={args.batch_size}",
                                      f"value_model.checkpoint={critic}", f"orchestration.queue_depth={args.queue_depth}",
                                      "orchestration.num_experience_actors=1", "orchestration.cpus_per_worker=1",
                                      recipe=recipe)
            record = out / f"{name}-{r}.json"
            timing.run_on_ray(cfg, record)
            times, threads = timing.step_times(record, args.warmup)
            per_run[name].append(statistics.median(times))
            print(f"round {r} {name:30s}: median learner step {per_run[name][-1] * 1e3:8.2f} ms over {len(times)} "
                  f"steps (torch threads {threads}; load {bench.loadavg()})", flush=True)
    for name, meds in per_run.items():
        s = bench.summarize(meds)
        print(f"{name:30s}: median of run medians {s['median'] * 1e3:8.2f} ms (min–max {s['min'] * 1e3:.2f}–"
              f"{s['max'] * 1e3:.2f}, n={s['n']})")
    print(f"loadavg after: {bench.loadavg()}")
    if "baseline" in per_run:
        # The headline (async frozen) last, so the last line is its figure.
        others = sorted((n for n in per_run if n != "baseline"), key=lambda n: n == "verifiable_async_frozen")
        for name in others:
            r = bench.summarize(bench.paired_ratios(per_run[name], per_run["baseline"]))
            print(f"{name} ÷ baseline per round: median {r['median']:.3f}, min–max {r['min']:.3f}–{r['max']:.3f}")
        for name in others:
            r = bench.summarize(bench.paired_ratios(per_run[name], per_run["baseline"]))
            print(f"{name}_over_baseline: {r['median']:.3f}")
    return 0


if __name__ == "__main__":  # the data pipeline may spawn processes that re-import this file
    raise SystemExit(main())

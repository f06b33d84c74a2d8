"""Learner step time of the verifiable recipe with the experience phase `async` (Ray experience
actors scoring ahead) vs `colocated` (in the learner), vs the baseline recipe (no critic at all);
all in a 1-worker Ray Train TorchTrainer on the micro preset (DESIGN.md §9: verifiable with a
frozen critic and async experience ≤ 1.10 × baseline, on GPU).

Configurations (same data, batch and steps):
  baseline                      no critic
  verifiable colocated frozen   critic forward + GAE in the learner, value loss off
  verifiable async frozen       critic forward + GAE in an experience actor, queue_depth ahead
  verifiable async learning     value loss on, critic published every step (sync interval 1)
On a 2-core CPU the actor and the learner compete for the same cores, so async cannot hide the
critic forward the way a spare GPU does: record the CPU figures as what they are.

    python benchmarks/experience_overlap.py             # ~4-6 min on 2 CPU cores

Last lines: `<config>_over_baseline: X` for each verifiable configuration.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--queue-depth", type=int, default=2)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="wmtp-experience-overlap-"))
    timing.start_ray(num_cpus=4)
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(timing)
    critic = make_critic(out, args.batch_size)
    medians: dict[str, float] = {}
    for name in args.configs:
        recipe, overrides = CONFIGS[name]
        cfg = timing.bench_config(out, name, args.steps, *overrides, f"data.batch_size={args.batch_size}",
                                  f"value_model.checkpoint={critic}", f"orchestration.queue_depth={args.queue_depth}",
                                  "orchestration.num_experience_actors=1", "orchestration.cpus_per_worker=1",
                                  recipe=recipe)
        record = out / f"{name}.json"
        timing.run_on_ray(cfg, record)
        times, threads = timing.step_times(record, args.warmup)
        medians[name] = statistics.median(times)
        print(f"{name:30s}: median learner step {medians[name] * 1e3:8.2f} ms over {len(times)} steps "
              f"(torch threads {threads})", flush=True)
    if "baseline" in medians:
        for name, value in medians.items():
            if name != "baseline":
                print(f"{name}_over_baseline: {value / medians['baseline']:.3f}")
    return 0


if __name__ == "__main__":  # the data pipeline may spawn processes that re-import this file
    raise SystemExit(main())

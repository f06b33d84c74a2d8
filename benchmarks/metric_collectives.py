"""The per-step cost of metric-only collectives: a recipe's optimizer step on 2 gloo ranks when the
step logs (`train.log_every=1`: every step computes its metrics, as every step did before they
were gated) vs when it does not (`train.log_every` beyond the run: the collectives that only feed
metrics are skipped), alternating step by step in one process group.

Each rank builds the recipe twice (same config but `train.log_every`), runs `setup()`, then steps
both round-robin (the order flips every step), doing what the recipe's loop does per step: the
step, the meter's update and, on a logging step, `loop.log_step` (the meter's all-reduce of the
counts is in it). Collectives are counted by wrapping `torch.distributed`'s functions in this
benchmark's own processes (wmtp is not patched) while a step runs; step time is rank 0's wall
clock of the same span.

    python benchmarks/metric_collectives.py                          # verifiable, ~1-2 min on 2 cores
    python benchmarks/metric_collectives.py --recipe baseline --steps 30

Prints the machine, load, collectives per step by kind (`counts: {json}`, each rank's: they must
agree), median step times, and last `nonlog_vs_log_step_time: X` (median non-logging step ÷
median logging step; below 1 is what skipping the metric collectives saves).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench  # noqa: E402

# The torch.distributed entry points a recipe step can reach (collectives and object collectives).
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "reduce_scatter_tensor",
               "broadcast", "broadcast_object_list", "reduce", "gather", "scatter", "all_to_all_single", "barrier")
MODES = {"log": 1, "nolog": 10**9}  # train.log_every of each recipe instance


class CollectiveCounter:
    """Counts calls of `torch.distributed`'s collectives by name while `active` (this process only)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.calls: Counter[str] = Counter()
        self.active = False
        for name in COLLECTIVES:
            original = getattr(dist, name)

            def wrapper(*args, _original=original, _name=name, **kwargs):
                if self.active:
                    self.calls[_name] += 1
                return _original(*args, **kwargs)
            setattr(dist, name, wrapper)


class NoCheckpoints:
    """A sink with nothing to resume and nothing written (the benchmark never checkpoints)."""

    def latest(self):
        return None

    def save(self, step, write, metrics) -> None:
        pass


def build(recipe: str, out: Path, log_every: int, overrides: list[str]):
    from wmtp.config.loader import load_config
    from wmtp.recipes import build_recipe
    from wmtp.tracking.base import NullLogger

    cfg = load_config("configs/defaults.yaml", recipe, "local-light", True, [
        f"run.output_dir={out}", f"run.name=log{log_every}", "train.steps=1000000000", f"train.log_every={log_every}",
        "train.eval_every=1000000000", "train.checkpoint_every=1000000000", "train.heatmap_samples=0",
        "tracking.backends=[]", "orchestration.enabled=false", *overrides])
    r = build_recipe(cfg, logger=NullLogger(), checkpoint_sink=NoCheckpoints())
    r.setup()
    return getattr(r, "loop", r)  # ref_tuning runs the baseline loop


def rank_main(rank: int, world: int, port: int, args, result_dir: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    from wmtp.recipes.loop import due, log_step

    counter = CollectiveCounter()
    recipes = {mode: build(args.recipe, Path(args.out) / mode, every, args.overrides) for mode, every in MODES.items()}
    counts: dict[str, list[dict[str, int]]] = {mode: [] for mode in MODES}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for step in range(1, args.steps + 1):
        for mode in (list(MODES) if step % 2 else list(MODES)[::-1]):
            r = recipes[mode]
            counter.calls.clear()
            counter.active = True
            t0 = time.perf_counter()
            stats, count = r.step(step)  # what the recipe's loop does per step
            r.meter.update(count)
            if due(step, r.cfg.train.log_every, r.cfg.train.steps):
                log_step(r.logger, step, stats, {}, r.state)
            times[mode].append(time.perf_counter() - t0)
            counter.active = False
            counts[mode].append(dict(counter.calls))
    for r in recipes.values():
        r.close()
    dist.destroy_process_group()
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps({"counts": counts, "times": times}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="verifiable", help="baseline | critic | verifiable | rho1_weighted")
    p.add_argument("--steps", type=int, default=20, help="steps of each mode (the first is not timed)")
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. data.batch_size=4")
    args = p.parse_args(argv)
    import torch.multiprocessing as mp

    bench.print_header(f"metric-only collectives per step, {args.recipe}, 2 gloo ranks", {})
    with tempfile.TemporaryDirectory(prefix="wmtp-bench-") as tmp:
        args.out = tmp
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(rank_main, args=(2, port, args, tmp), nprocs=2, join=True, start_method="spawn")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]
    if ranks[0]["counts"] != ranks[1]["counts"]:
        raise SystemExit("the ranks ran different collectives (they would deadlock on a real cluster)")
    per_step = {mode: ranks[0]["counts"][mode][-1] for mode in MODES}
    print("counts: " + json.dumps({"recipe": args.recipe, "per_step": per_step,
                                    "every_step_same": {m: all(c == per_step[m] for c in ranks[0]["counts"][m][1:])
                                                        for m in MODES}}))
    med = {}
    for mode in MODES:
        s = bench.summarize([t * 1e3 for t in ranks[0]["times"][mode][1:]])
        med[mode] = s["median"]
        total = sum(per_step[mode].values())
        print(f"{mode:>5} (train.log_every={MODES[mode]}): {total} collectives/step {per_step[mode]}; "
              f"step median {s['median']:.1f} ms (IQR {s['q1']:.1f}-{s['q3']:.1f})")
    print(f"loadavg after: {bench.loadavg()}")
    print(f"nonlog_vs_log_step_time: {med['nolog'] / med['log']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

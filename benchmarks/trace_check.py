"""The traced memory plan against a real run of the same two steps.

The trace (`wmtp train ... --dry-run --trace`, `wmtp.trace.memory`) runs a recipe's setup and two
optimizer steps on fake tensors and reports the peak it measured. Here the same configuration, in
one process (`orchestration.num_workers=1`: a GPU machine lent for a check has one device), runs
the same two steps on real tensors with the trace's stand-ins for data and checkpoints
(full-length batches, weights of the right shapes), and the peak is measured by the device:

- `--device cuda`: `torch.cuda.max_memory_allocated()` over the two steps (what the trace
  predicts, minus the caching allocator's rounding and fragmentation, which neither counts);
- `--device cpu`: the trace's own tracker (torch's FSDP2 `MemTracker`) on real CPU tensors: the
  same accounting with real allocations instead of fake ones (checks the fake-tensor run, not a
  kernel; tensors alive before the steps count only through the models and optimizers).

Both runs start in fresh processes. Last line: `trace_over_measured: X` (traced ÷ measured peak).

    python benchmarks/trace_check.py --device cuda              # a ~100M policy + critic, bf16
    python benchmarks/trace_check.py --device cpu --recipe baseline
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The CI trace test's small shape (tests/parallel/test_trace.py), on one device.
SMALL = ["model.preset=1b-mtp4", "model.params.dim=768", "model.params.n_layers=8", "model.params.n_heads=12",
         "model.params.n_kv_heads=12", "data.max_seq_len=512", "data.batch_size=2", "data.grad_accum=2"]


def config(recipe: str, device: str, extra: list[str]):
    from wmtp.config.loader import load_config

    overrides = [*SMALL, "orchestration.num_workers=1", "orchestration.enabled=false",
                 f"orchestration.use_gpu={'true' if device == 'cuda' else 'false'}",
                 "tracking.backends=[jsonl]", *extra]
    configs = REPO / "configs"
    return load_config(configs / "defaults.yaml", configs / f"recipe.{recipe}.yaml", "a100x4", overrides=overrides)


def measured_peak(cfg, device: str) -> int:
    """Bytes at the peak of two real steps of `cfg`'s recipe (this process)."""
    import tempfile
    from dataclasses import replace

    import torch

    from wmtp.parallel.build import policy_args
    from wmtp.parallel.reduce import process_layout
    from wmtp.recipes import build_recipe
    from wmtp.trace.memory import TRACED_STEPS, _NullSink, trace_env, traced_config
    from wmtp.tracking.base import NullLogger

    cfg = traced_config(cfg, Path(tempfile.mkdtemp(prefix="wmtp-trace-check-")))
    # The trace's policies on CPU; on CUDA they are the run's own.
    layout = replace(process_layout(cfg.orchestration.use_gpu), gpu_policies=device == "cpu")
    env = trace_env(cfg, policy_args(cfg).vocab_size, layout)
    recipe = build_recipe(cfg, logger=NullLogger(), checkpoint_sink=_NullSink(), env=env)
    recipe.setup()
    owner = getattr(recipe, "loop", recipe)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for step in range(1, TRACED_STEPS + 1):
            owner.step(step)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    from wmtp.trace.memory import make_tracker

    tracker = make_tracker(owner)  # the trace's own accounting, on real tensors
    with tracker:
        for step in range(1, TRACED_STEPS + 1):
            owner.step(step)
    return int(tracker.peak().get("Total", 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--recipe", default="verifiable")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the real-run subprocess
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides (e.g. a smaller shape)")
    args = ap.parse_args()
    cfg = config(args.recipe, args.device, args.overrides)
    if args.measure:
        print(json.dumps({"peak_bytes": measured_peak(cfg, args.device)}))
        return

    from wmtp.trace.memory import trace_in_subprocess

    bench.print_header("trace_check", {})
    print(f"setup: recipe={args.recipe} device={args.device} overrides={[*SMALL, *args.overrides]}")
    traced = trace_in_subprocess(cfg)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, "--measure", "--device", args.device, "--recipe", args.recipe,
                           *args.overrides], capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"the real run failed:\n{proc.stderr[-3000:]}")
    measured = json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**30
    print(traced.summary())
    print(f"traced peak:   {traced.peak_gib:.3f} GiB")
    print(f"measured peak: {measured:.3f} GiB "
          f"({'torch.cuda.max_memory_allocated' if args.device == 'cuda' else 'the trace tracker on real CPU tensors'})")
    print(f"loadavg after: {bench.loadavg()}")
    print(f"trace_over_measured: {traced.peak_gib / measured:.3f}")


if __name__ == "__main__":
    main()

"""How long a critic publish takes on the learner side, on CPU: micro and ~1B critic shapes.

    python benchmarks/publish.py [--repeats 5] [--ray]

Times the two publish mechanisms of the learner (docs/DISTRIBUTED.md, "Scoring, snapshots and
publishing"):
  snapshot copy   colocated, critic_sync_interval > 1: copy the critic's (local) tensors into the
                  compute-dtype snapshot (`CriticSnapshot.refresh`);
  one publisher   async: gather the critic one tensor at a time into host memory in bf16
                  (`wmtp.parallel.gather.gather_state_dict`), plus with `--ray` the one `ray.put`
                  into a local object store.
One process (no FSDP: the gathers are plain casts and copies), the critic of the `micro` preset and
of `1b-mtp4` (value_args_from_policy: trunk depth, scalar head), weights left uninitialised (the
copy costs the same). The 7B figure is a linear extrapolation in bytes (the work is memory-bound
copies), stated, not measured. The mechanisms run round-robin `--repeats` times after one untimed
call each; each time is the median with its min–max. Last line: `publish_seconds_1b: X` (the
one publisher's median, bf16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench  # noqa: E402


def critic_of(preset: str, dtype: torch.dtype):
    from wmtp.model.args import get_preset
    from wmtp.model.value import build_value_model, value_args_from_policy

    model = build_value_model(value_args_from_policy(get_preset(preset)), "linear", device="meta")
    return model.to(dtype).to_empty(device="cpu")


def measure(preset: str, repeats: int, use_ray: bool) -> dict:
    from wmtp.parallel.gather import gather_state_dict, state_dict_bytes
    from wmtp.recipes.experience import CriticSnapshot

    critic = critic_of(preset, torch.float32)
    n = sum(p.numel() for p in critic.parameters())
    snapshot = CriticSnapshot(critic, torch.bfloat16)
    methods = {"snapshot_copy_s": lambda: snapshot.refresh(critic, 1),
               "gather_bf16_s": lambda: gather_state_dict(critic, dtype=torch.bfloat16)}
    if use_ray:
        import ray

        state = gather_state_dict(critic, dtype=torch.bfloat16)
        methods["ray_put_s"] = lambda: ray.put(state)
    times = bench.round_robin(methods, repeats)
    snapshot = None  # free it before the next shape
    out = {"params": n, "bf16_bytes": state_dict_bytes(critic, torch.bfloat16),
           **{k: bench.summarize(v) for k, v in times.items()}}
    out["publish_s"] = out["gather_bf16_s"]["median"] + (out["ray_put_s"]["median"] if use_ray else 0.0)
    return out


def fmt(s: dict) -> str:
    return f"{s['median']:.4f} s ({s['min']:.4f}–{s['max']:.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ray", action="store_true", help="also time the one ray.put (starts a local Ray)")
    args = parser.parse_args()
    bench.print_header("publish", {})
    if args.ray:
        import ray

        ray.init(num_cpus=1, include_dashboard=False, object_store_memory=4 * 1024 ** 3)
    from wmtp.model.args import get_preset
    from wmtp.model.value import value_args_from_policy

    results = {preset: measure(preset, args.repeats, args.ray) for preset in ("micro", "1b-mtp4")}
    for preset, r in results.items():
        gbps = r["bf16_bytes"] / r["publish_s"] / 1e9
        print(f"{preset}: critic {r['params'] / 1e6:.1f}M params, {r['bf16_bytes'] / 2 ** 30:.3f} GiB bf16; "
              f"snapshot copy {fmt(r['snapshot_copy_s'])}, gather to host bf16 {fmt(r['gather_bf16_s'])}"
              + (f", ray.put {fmt(r['ray_put_s'])}" if "ray_put_s" in r else "") + f" ({gbps:.2f} GB/s)")
    one_b = results["1b-mtp4"]
    with torch.device("meta"):
        from wmtp.model.value import ValueModel

        n7 = sum(p.numel() for p in ValueModel(value_args_from_policy(get_preset("7b-mtp4"))).parameters())
    scale = n7 / one_b["params"]
    print(f"7b-mtp4 critic ({n7 / 1e9:.2f}B params, {n7 * 2 / 2 ** 30:.1f} GiB bf16), extrapolated linearly in "
          f"bytes from 1b (x{scale:.2f}): publish {one_b['publish_s'] * scale:.2f} s, snapshot copy "
          f"{one_b['snapshot_copy_s']['median'] * scale:.2f} s on this CPU (a GPU's device copy and PCIe/NVLink "
          f"gathers are faster; per step divide by stage2.critic_sync_interval)")
    print(f"loadavg after: {bench.loadavg()}")
    print(f"publish_seconds_1b: {one_b['publish_s']:.4f}")


if __name__ == "__main__":
    main()

"""How long a critic publish takes on the learner side, on CPU: micro and ~1B critic shapes.

    python benchmarks/publish.py [--repeats 3] [--ray]

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
copies), stated, not measured. Last line: `publish_seconds_1b: X` (one-publisher, bf16).
"""

from __future__ import annotations

import argparse
import time

import torch


def critic_of(preset: str, dtype: torch.dtype):
    from wmtp.model.args import get_preset
    from wmtp.model.value import build_value_model, value_args_from_policy

    model = build_value_model(value_args_from_policy(get_preset(preset)), "linear", device="meta")
    return model.to(dtype).to_empty(device="cpu")


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(preset: str, repeats: int, use_ray: bool) -> dict[str, float]:
    from wmtp.parallel.gather import gather_state_dict, state_dict_bytes
    from wmtp.recipes.experience import CriticSnapshot

    critic = critic_of(preset, torch.float32)
    n = sum(p.numel() for p in critic.parameters())
    snapshot = CriticSnapshot(critic, torch.bfloat16)
    out = {"params": n, "bf16_bytes": state_dict_bytes(critic, torch.bfloat16),
           "snapshot_copy_s": best_of(lambda: snapshot.refresh(critic, 1), repeats),
           "gather_bf16_s": best_of(lambda: gather_state_dict(critic, dtype=torch.bfloat16), repeats)}
    snapshot = None  # free it before the next shape
    if use_ray:
        import ray

        state = gather_state_dict(critic, dtype=torch.bfloat16)
        out["ray_put_s"] = best_of(lambda: ray.put(state), repeats)
    out["publish_s"] = out["gather_bf16_s"] + out.get("ray_put_s", 0.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also time the one ray.put (starts a local Ray)")
    args = parser.parse_args()
    if args.ray:
        import ray

        ray.init(num_cpus=1, include_dashboard=False, object_store_memory=4 * 1024 ** 3)
    from wmtp.model.args import get_preset
    from wmtp.model.value import value_args_from_policy

    results = {preset: measure(preset, args.repeats, args.ray) for preset in ("micro", "1b-mtp4")}
    for preset, r in results.items():
        gbps = r["bf16_bytes"] / r["publish_s"] / 1e9
        print(f"{preset}: critic {r['params'] / 1e6:.1f}M params, {r['bf16_bytes'] / 2 ** 30:.3f} GiB bf16; "
              f"snapshot copy {r['snapshot_copy_s']:.4f} s, gather to host bf16 {r['gather_bf16_s']:.4f} s"
              + (f", ray.put {r['ray_put_s']:.4f} s" if "ray_put_s" in r else "") + f" ({gbps:.2f} GB/s)")
    one_b = results["1b-mtp4"]
    with torch.device("meta"):
        from wmtp.model.value import ValueModel

        n7 = sum(p.numel() for p in ValueModel(value_args_from_policy(get_preset("7b-mtp4"))).parameters())
    scale = n7 / one_b["params"]
    print(f"7b-mtp4 critic ({n7 / 1e9:.2f}B params, {n7 * 2 / 2 ** 30:.1f} GiB bf16), extrapolated linearly in "
          f"bytes from 1b (x{scale:.2f}): publish {one_b['publish_s'] * scale:.2f} s, snapshot copy "
          f"{one_b['snapshot_copy_s'] * scale:.2f} s on this CPU (a GPU's device copy and PCIe/NVLink "
          f"gathers are faster; per step divide by stage2.critic_sync_interval)")
    print(f"publish_seconds_1b: {one_b['publish_s']:.4f}")


if __name__ == "__main__":
    main()

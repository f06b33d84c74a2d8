"""Vectorised GAE (`wmtp.weighting.gae.compute_gae`) vs the reverse-loop reference
(`compute_gae_reference`, one batch-vectorised step per position) at B=16, S=2048, and their max
absolute difference (DESIGN.md §9: ≥ 100× faster, equal to 1e-6). Last line: `gae_speedup: X`.

    python benchmarks/gae.py                 # CPU
    python benchmarks/gae.py --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wmtp.weighting.gae import compute_gae, compute_gae_reference


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--lam", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU intra-op threads for both (GAE ops are tiny: extra threads only add sync, "
                         "and on a loaded machine oversubscription makes them 100x slower)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    B, S = a.batch, a.seq
    values = torch.rand(B, S, generator=g).to(dev)
    # Right-padded responses of varied length after a prompt of varied length.
    starts = torch.randint(16, S // 4, (B,), generator=g)
    ends = torch.randint(S // 2, S, (B,), generator=g)
    pos = torch.arange(S)
    mask = ((pos[None] >= starts[:, None]) & (pos[None] <= ends[:, None])).to(dev)
    rewards = torch.randint(0, 2, (B,), generator=g).float().to(dev)
    print(f"setup: device={dev} B={B} S={S} gamma={a.gamma} lam={a.lam} float32 inputs, threads={a.threads}")
    t_ref, (adv_ref, ret_ref) = timed(lambda: compute_gae_reference(values, mask, rewards, a.gamma, a.lam), dev,
                                      max(1, a.repeats // 2))
    t_vec, (adv, ret) = timed(lambda: compute_gae(values, mask, rewards, a.gamma, a.lam), dev, a.repeats * 4)
    diff = max((adv - adv_ref).abs().max().item(), (ret - ret_ref).abs().max().item())
    v64 = values.double()
    a64, r64 = compute_gae(v64, mask, rewards, a.gamma, a.lam)
    a64_ref, r64_ref = compute_gae_reference(v64, mask, rewards, a.gamma, a.lam)
    diff64 = max((a64 - a64_ref).abs().max().item(), (r64 - r64_ref).abs().max().item())
    print(f"reverse loop: {t_ref * 1e3:9.3f} ms")
    print(f"vectorised:   {t_vec * 1e3:9.3f} ms")
    print(f"max_abs_diff (float32 outputs): {diff:.3e}")
    print(f"max_abs_diff (float64 inputs):  {diff64:.3e}")
    print(f"gae_speedup: {t_ref / t_vec:.1f}")


if __name__ == "__main__":
    main()

"""GAE: wmtp's vectorised `compute_gae` vs the loops and vectorised GAE a user would pick instead,
round-robin in one process, at several batch sizes (default B = 1, 16, 64; S = 2048).

Methods (same inputs, outputs checked equal inside the response span):
  wmtp               `wmtp.weighting.gae.compute_gae` (blockwise triangular matmuls, fp64 accumulation)
  torchrl_loop       `torchrl.objectives.value.functional.generalized_advantage_estimate`
  torchrl_vec        `torchrl.objectives.value.functional.vec_generalized_advantage_estimate`
  verl_loop          the reverse loop of verl's `compute_gae_advantage_return` (copied below)
The peers get their inputs prepared outside the timed call (state/next-state values, per-token
rewards, done flags), which favours them; wmtp builds its TD errors from (values, mask, R) inside.
Peers that are not installed are reported as `skipped: <why>` (`pip install -e '.[bench]'`).

    python benchmarks/gae.py                       # CPU, ~1-2 min
    python benchmarks/gae.py --device cuda

Last line: `gae_min_speedup_vs_fastest_peer: X` — over the batch sizes, the smallest ratio
(fastest peer's median time ÷ wmtp's median time); < 1 means a peer is faster somewhere.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench  # noqa: E402

from wmtp.weighting.gae import compute_gae  # noqa: E402


def verl_gae_loop(token_level_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor,
                  gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop of `compute_gae_advantage_return` in verl (volcengine/verl,
    `verl/trainer/ppo/core_algos.py`, Apache-2.0), written out here so the benchmark needs no verl
    install. verl whitens the advantages afterwards (`masked_whiten`); that step is left out, as
    wmtp whitens elsewhere too. Shapes `[B, T]` in response coordinates, values masked to 0 after
    the response (as verl's critic returns them)."""
    with torch.no_grad():
        lastgaelam = 0
        advantages_reversed = []
        gen_len = token_level_rewards.shape[-1]
        for t in reversed(range(gen_len)):
            nextvalues = values[:, t + 1] if t < gen_len - 1 else 0.0
            delta = token_level_rewards[:, t] + gamma * nextvalues - values[:, t]
            lastgaelam = delta + gamma * lam * lastgaelam
            advantages_reversed.append(lastgaelam)
        advantages = torch.stack(advantages_reversed[::-1], dim=1)
        returns = advantages + values
    return advantages, returns


def make_inputs(B: int, S: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(B, S, generator=g)
    starts = torch.randint(min(16, S // 8), S // 4, (B,), generator=g)  # prompt of varied length
    ends = torch.randint(S // 2, S, (B,), generator=g)  # right-padded response of varied length
    pos = torch.arange(S)
    mask = (pos[None] >= starts[:, None]) & (pos[None] <= ends[:, None])
    rewards = torch.randint(0, 2, (B,), generator=g).float()
    return values.to(device), mask.to(device), rewards.to(device)


def peer_inputs(values: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """wmtp's layout in peer terms. Token j of the response is the action taken in the state
    before it: V(s_j) = values[:, j-1], V(s_{j+1}) = values[:, j]; the outcome reward R is the
    reward of the last response token, which ends the episode."""
    B, S = values.shape
    last = mask & ~torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    state_v = torch.cat([torch.zeros_like(values[:, :1]), values[:, :-1]], dim=1) * mask
    next_v = values * (mask & ~last)
    reward = last.to(values.dtype) * rewards[:, None]
    # One trajectory per row: the episode ends at the last response token. Outside the span the
    # values and rewards are 0, so nothing leaks into it (outputs outside it are masked).
    done = last
    return {"state_v": state_v, "next_v": next_v, "reward": reward, "done": done, "last": last}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--lam", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=41)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU intra-op threads for every method (GAE ops are tiny; extra threads only add sync)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    bench.print_header("gae", {"torchrl": bench.version("torchrl"), "tensordict": bench.version("tensordict")})
    try:
        from torchrl.objectives.value.functional import (
            generalized_advantage_estimate,
            vec_generalized_advantage_estimate,
        )
    except ImportError as e:
        generalized_advantage_estimate = vec_generalized_advantage_estimate = None
        print(f"torchrl_loop: skipped: torchrl does not import ({e})")
        print(f"torchrl_vec: skipped: torchrl does not import ({e})")
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    speedups = []
    for B in a.batches:
        values, mask, rewards = make_inputs(B, a.seq, dev)
        p = peer_inputs(values, mask, rewards)
        t3 = {k: v.unsqueeze(-1) for k, v in p.items()}  # torchrl: [B, T, 1], time_dim=-2
        g, lam = a.gamma, a.lam
        methods = {"wmtp": partial(compute_gae, values, mask, rewards, g, lam),
                   "verl_loop": partial(verl_gae_loop, p["reward"], p["state_v"], mask, g, lam)}
        if generalized_advantage_estimate is not None:
            trl_args = (g, lam, t3["state_v"], t3["next_v"], t3["reward"], t3["done"], t3["last"])
            methods["torchrl_loop"] = partial(generalized_advantage_estimate, *trl_args)
            methods["torchrl_vec"] = partial(vec_generalized_advantage_estimate, *trl_args)
        # Equality inside the span (the peers' outputs outside it are not defined the same way).
        ref_adv, ref_ret = compute_gae(values.double(), mask, rewards.double(), a.gamma, a.lam)
        for name, fn in methods.items():
            adv = fn()[0]
            adv = adv.squeeze(-1) if adv.dim() == 3 else adv
            diff = ((adv.double() - ref_adv) * mask).abs().max().item()
            print(f"B={B:3d} {name:13s} max |adv - fp64 reference| in span: {diff:.2e}")
            assert diff < 1e-3, f"{name} disagrees with the reference GAE at B={B}: {diff}"
        times = bench.round_robin(methods, a.repeats, sync=sync)
        stats = {n: bench.summarize(t) for n, t in times.items()}
        for n, s in stats.items():
            print(f"B={B:3d} S={a.seq} {n:13s} {bench.fmt_ms(s)}")
        peers = {n: s for n, s in stats.items() if n != "wmtp"}
        fastest = min(peers, key=lambda n: peers[n]["median"])
        ratios = sorted(bench.paired_ratios(times[fastest], times["wmtp"]))
        sp = peers[fastest]["median"] / stats["wmtp"]["median"]
        speedups.append(sp)
        for n in peers:
            r = bench.summarize(bench.paired_ratios(times[n], times["wmtp"]))
            print(f"B={B:3d} wmtp speed-up vs {n:13s}: x{peers[n]['median'] / stats['wmtp']['median']:.2f} "
                  f"(per-round ratios median {r['median']:.2f}, min–max {r['min']:.2f}–{r['max']:.2f}; "
                  f"fastest call ÷ fastest call x{peers[n]['min'] / stats['wmtp']['min']:.2f})")
        print(f"B={B:3d} fastest peer: {fastest}; wmtp speed-up x{sp:.2f} (per-round {ratios[0]:.2f}–{ratios[-1]:.2f})")
    print(f"loadavg after: {bench.loadavg()}")
    print(f"gae_min_speedup_vs_fastest_peer: {min(speedups):.2f}")


if __name__ == "__main__":
    main()

"""Peak memory of one training step (forward + backward) of a 4-head MTP model vs a 1-head model
with the same total number of transformer blocks (Meta's compute-matched layout), with wmtp's
chunked/recomputed MTP loss, and with a per-head loop (each head's `[B, S, V]` logits and
`F.cross_entropy`, one backward: what a user writes without a fused loss; not a stacked
`[B, S, H, V]` tensor). `benchmarks/mtp_ce.py` compares the loss alone with torchtune and Cut
Cross-Entropy.

Each configuration runs in a fresh subprocess, the four round-robin `--repeats` times. Memory =
peak during the step minus the memory held just before it (model, inputs): on CPU the process's
VmHWM (reset through /proc/self/clear_refs; malloc returns large blocks to the OS, so RSS follows
the live tensors), on CUDA `torch.cuda.max_memory_allocated`. Last line: `mtp_memory_ratio: X`
(4-head ÷ 1-head, chunked loss, median over rounds; docs/BENCHMARKS.md target ≤ 1.15).

    python benchmarks/mtp_memory.py                 # CPU, ~2-3 min on 2 cores
    python benchmarks/mtp_memory.py --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench  # noqa: E402

CONFIGS = [("1-head chunked", 1, "chunked"), ("4-head chunked", 4, "chunked"),
           ("1-head loop", 1, "loop"), ("4-head loop", 4, "loop")]


def _rss_hwm_bytes() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024


def _rss_bytes() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(cfg: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from wmtp.losses.alignment import IGNORE_INDEX, shift_labels
    from wmtp.losses.mtp import mtp_cross_entropy
    from wmtp.model.args import ModelArgs
    from wmtp.model.transformer import build_model

    torch.manual_seed(0)
    dev = torch.device(cfg["device"])
    args = ModelArgs(dim=cfg["dim"], n_layers=cfg["layers"], n_heads=cfg["dim"] // 64, vocab_size=cfg["vocab"],
                     multiple_of=64, n_future_tokens=cfg["heads"], max_seq_len=cfg["seq"])
    model = build_model(args, device=str(dev), seed=0)
    B, S, V = cfg["batch"], cfg["seq"], cfg["vocab"]
    tokens = torch.randint(0, V, (B, S), device=dev)
    labels = tokens.clone()
    labels[:, : S // 4] = IGNORE_INDEX  # a prompt quarter, as in instruction data

    def step() -> float:
        out = model(tokens)
        if cfg["loss"] == "chunked":
            loss = mtp_cross_entropy(out.hidden, model.output.weight, labels, chunk_size=cfg["chunk"]).loss
        else:  # per-head loop: one head's [B, S, V] logits at a time, all kept for the backward
            H = len(out.hidden)
            tgt = shift_labels(labels, H)
            loss = sum(F.cross_entropy(model.output(h).float().flatten(0, 1), tgt[..., k].flatten(),
                                       ignore_index=IGNORE_INDEX) for k, h in enumerate(out.hidden)) / H
        loss.backward()
        return loss.item()

    step()  # warm-up: one-time allocations (thread pools, kernels) are not the loss's
    model.zero_grad(set_to_none=True)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
        _reset_hwm()
    t0 = time.perf_counter()
    loss = step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_hwm_bytes()
    return {"step_peak_bytes": peak - before, "held_before_bytes": before, "loss": loss,
            "seconds": time.perf_counter() - t0,
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4, help="total transformer blocks (heads included)")
    ap.add_argument("--batch", type=int, default=None, help="default 4 on CPU (about a minute), 8 on CUDA")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--skip-loop", action="store_true", help="only the chunked loss (saves memory/time)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per configuration, round-robin")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.batch is None:
        a.batch = 8 if a.device == "cuda" else 4
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    base = {k: getattr(a, k) for k in ("device", "dim", "layers", "batch", "seq", "vocab", "chunk")}
    bench.print_header("mtp_memory", {})
    print(f"setup: {base}")
    configs = [c for c in CONFIGS if not (a.skip_loop and c[2] == "loop")]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    results: dict[str, list[dict]] = {c[0]: [] for c in configs}
    for r in range(a.repeats):
        for name, heads, loss in bench.rotated(configs, r):
            cfg = {**base, "heads": heads, "loss": loss}
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True,
                                  text=True, check=False, env=env)
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stderr}")
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    peak = {n: [x["step_peak_bytes"] / 2**20 for x in rs] for n, rs in results.items()}
    for name, rs in results.items():
        s = bench.summarize(peak[name])
        print(f"{name:15s} step peak median {s['median']:8.1f} MiB (min–max {s['min']:.1f}–{s['max']:.1f}, "
              f"n={s['n']}; held before {rs[0]['held_before_bytes'] / 2**20:.1f} MiB, params "
              f"{rs[0]['params'] / 1e6:.2f} M, loss {rs[0]['loss']:.4f}, {rs[0]['seconds']:.1f} s)")

    def ratio(x: float, y: float) -> float:
        return x / y if y > 0 else float("nan")

    if "4-head loop" in peak:
        for name in ("4-head loop", "1-head loop"):
            rr = [ratio(x, y) for x, y in zip(peak[name], peak["4-head chunked"])]
            print(f"{name.replace(' ', '_').replace('-', '')}_over_4head_chunked: median "
                  f"{bench.summarize(rr)['median']:.2f} (min–max {min(rr):.2f}–{max(rr):.2f})")
    rr = [ratio(x, y) for x, y in zip(peak["4-head chunked"], peak["1-head chunked"])]
    print(f"4-head ÷ 1-head chunked per round: min–max {min(rr):.3f}–{max(rr):.3f}")
    print(f"loadavg after: {bench.loadavg()}")
    print(f"mtp_memory_ratio: {bench.summarize(rr)['median']:.3f}")


if __name__ == "__main__":
    main()

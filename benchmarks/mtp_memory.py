"""Peak memory of one training step (forward + backward) of a 4-head MTP model vs a 1-head model
with the same total number of transformer blocks (Meta's compute-matched layout), with wmtp's
chunked/recomputed MTP loss, and with the naive loss that materialises `[B, S, H, V]` logits.

Each configuration runs in a fresh subprocess. Memory = peak during the step minus the memory held
just before it (model, inputs): on CPU the process's VmHWM (reset through /proc/self/clear_refs),
on CUDA `torch.cuda.max_memory_allocated`. Last line: `mtp_memory_ratio: X` (4-head ÷ 1-head,
chunked loss; DESIGN.md §9 target ≤ 1.15).

    python benchmarks/mtp_memory.py                 # CPU, 1-2 min on 2 cores
    python benchmarks/mtp_memory.py --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import time

CONFIGS = [("1-head chunked", 1, "chunked"), ("4-head chunked", 4, "chunked"),
           ("1-head naive", 1, "naive"), ("4-head naive", 4, "naive")]


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
        else:
            H = len(out.hidden)
            logits = torch.stack([model.output(h) for h in out.hidden], dim=2).float()  # [B, S, H, V]
            ce = F.cross_entropy(logits.flatten(0, 2), shift_labels(labels, H).flatten(),
                                 ignore_index=IGNORE_INDEX, reduction="none").view(B, S, H)
            valid = shift_labels(labels, H) != IGNORE_INDEX
            loss = ((ce * valid).sum((0, 1)) / valid.sum((0, 1))).mean()
        loss.backward()
        return loss.item()

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
    ap.add_argument("--skip-naive", action="store_true", help="only the chunked loss (saves memory/time)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.batch is None:
        a.batch = 8 if a.device == "cuda" else 4
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    base = {k: getattr(a, k) for k in ("device", "dim", "layers", "batch", "seq", "vocab", "chunk")}
    print(f"setup: {base}")
    results = {}
    for name, heads, loss in CONFIGS:
        if a.skip_naive and loss == "naive":
            continue
        cfg = {**base, "heads": heads, "loss": loss}
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = r
        print(f"{name:16s} step peak {r['step_peak_bytes'] / 2**20:9.1f} MiB  (held before "
              f"{r['held_before_bytes'] / 2**20:7.1f} MiB, params {r['params'] / 1e6:.2f} M, "
              f"loss {r['loss']:.4f}, {r['seconds']:.1f} s)")
    one, four = results["1-head chunked"]["step_peak_bytes"], results["4-head chunked"]["step_peak_bytes"]
    if "4-head naive" in results:
        print(f"naive_4head_over_chunked_4head: {results['4-head naive']['step_peak_bytes'] / four:.2f}")
        print(f"naive_4head_over_naive_1head: {results['4-head naive']['step_peak_bytes'] / results['1-head naive']['step_peak_bytes']:.2f}")
    print(f"mtp_memory_ratio: {four / one:.3f}")


if __name__ == "__main__":
    main()

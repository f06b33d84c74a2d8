"""MTP cross-entropy over H heads (loss + backward to the hidden states and the shared output
matrix): wmtp's chunked weighted MTP CE vs the losses a user would pick instead.

Methods (same hidden states `[B, S, D]` per head, output weight `[V, D]`, shifted targets, a
prompt quarter ignored; weights `[B, S]` target-indexed where the method takes weights):
  wmtp          `wmtp.losses.mtp.mtp_cross_entropy` (valid rows only, `[chunk, V]` logits at a time,
                recomputed in backward), weighted
  naive_loop    per head: logits `h_k W^T`, `F.cross_entropy(reduction="none")` × weights; one
                backward (a per-head loop, not a stacked `[B, S, H, V]` tensor), weighted
  torchtune     per head: `torchtune.modules.loss.CEWithChunkedOutputLoss` on the logits of 8
                sequence chunks (what torchtune's recipes feed it), unweighted (it takes no weights)
  cce_compile   per head: Cut Cross-Entropy's `linear_cross_entropy(..., impl="torch_compile",
                reduction="none")` × weights
Memory: each method in a fresh process (malloc returns large blocks to the OS, so RSS follows
the live tensors), one warm-up step (compilation included) and then the measured step: peak RSS
(VmHWM, reset through /proc/self/clear_refs) minus the RSS just before it; on CUDA,
`max_memory_allocated` minus the allocated memory before. Repeated `--memory-repeats` times,
processes round-robin. Time: all methods in one process, round-robin, `--repeats` rounds.

    python benchmarks/mtp_ce.py                  # CPU, ~3 min on 2 shared cores
    python benchmarks/mtp_ce.py --device cuda

Peers load lazily; one that is missing or fails prints `<name>: skipped: <why>`. torchtune's and
Cut Cross-Entropy's package `__init__`s import `datasets`/`torchao` and `triton` (a GPU compiler),
which a CPU install does not have: the benchmark loads the two loss modules from the installed
packages by file path (`_load_module_file`), so the code timed is the installed peer's own.
Last line: `mtp_ce_memory_vs_best_peer: X` (wmtp's peak loss memory ÷ the lowest peer's).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench  # noqa: E402

METHODS = ("wmtp", "naive_loop", "torchtune", "cce_compile")
PEER_DISTS = {"torchtune": "torchtune", "cce_compile": "cut-cross-entropy"}


def _load_module_file(dist: str, package: str, relpath: str, name: str) -> types.ModuleType:
    """Import `package/relpath` of the installed distribution `dist` as `name`, without running
    the package's `__init__` (set up as an empty namespace so its relative imports resolve)."""
    files = importlib.metadata.distribution(dist).files or []
    target = next((f for f in files if str(f).replace("\\", "/") == f"{package}/{relpath}"), None)
    if target is None:
        raise ImportError(f"{dist} has no {package}/{relpath}")
    path = Path(target.locate())
    if package not in sys.modules:
        pkg = types.ModuleType(package)
        pkg.__path__ = [str(path.parents[len(Path(relpath).parts) - 1])]
        sys.modules[package] = pkg
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _build_methods(names: list[str]):
    """name -> loss_fn(hidden, W, labels, weights, H) or the reason it is skipped."""
    import torch.nn.functional as F

    from wmtp.losses.alignment import IGNORE_INDEX, align_target_weights, shift_labels
    from wmtp.losses.mtp import mtp_cross_entropy

    def wmtp(hidden, W, labels, weights, H):
        return mtp_cross_entropy(hidden, W, labels, weights=weights, chunk_size=1024).loss

    def naive_loop(hidden, W, labels, weights, H):
        tgt, w = shift_labels(labels, H), align_target_weights(weights, H)
        loss = 0.0
        for k in range(H):
            logits = (hidden[k] @ W.t()).float()  # [B, S, V], one head at a time
            ce = F.cross_entropy(logits.flatten(0, 1), tgt[..., k].flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="none")
            valid = tgt[..., k].flatten() != IGNORE_INDEX
            loss = loss + (ce * w[..., k].flatten() * valid).sum() / valid.sum().clamp_min(1) / H
        return loss

    out: dict[str, object] = {}
    for name in names:
        try:
            if name == "wmtp":
                out[name] = wmtp
            elif name == "naive_loop":
                out[name] = naive_loop
            elif name == "torchtune":
                mod = _load_module_file("torchtune", "torchtune", "modules/loss/ce_chunked_output_loss.py",
                                        "torchtune.modules.loss.ce_chunked_output_loss")
                ce_fn = mod.CEWithChunkedOutputLoss(num_output_chunks=8, ignore_index=IGNORE_INDEX)

                def torchtune(hidden, W, labels, weights, H, ce_fn=ce_fn):
                    tgt = shift_labels(labels, H)
                    return sum(ce_fn([c @ W.t() for c in hidden[k].chunk(ce_fn.num_output_chunks, dim=1)],
                                     tgt[..., k]) for k in range(H)) / H

                out[name] = torchtune
            elif name == "cce_compile":
                mod = _load_module_file("cut-cross-entropy", "cut_cross_entropy", "torch_compile.py",
                                        "cut_cross_entropy.torch_compile")

                def cce_compile(hidden, W, labels, weights, H, lce=mod.torch_compile_linear_cross_entropy):
                    tgt, w = shift_labels(labels, H), align_target_weights(weights, H)
                    loss = 0.0
                    for k in range(H):
                        ce = lce(hidden[k], W, tgt[..., k], ignore_index=IGNORE_INDEX, reduction="none")
                        valid = tgt[..., k] != IGNORE_INDEX
                        loss = loss + (ce * w[..., k] * valid).sum() / valid.sum().clamp_min(1) / H
                    return loss

                out[name] = cce_compile
        except Exception as e:  # noqa: BLE001 — a peer that cannot load is reported, not fatal
            out[name] = f"{type(e).__name__}: {e}".splitlines()[0]
    return out


def _inputs(cfg: dict):
    import torch

    from wmtp.losses.alignment import IGNORE_INDEX

    g = torch.Generator().manual_seed(0)
    dev = torch.device(cfg["device"])
    B, S, D, V, H = cfg["batch"], cfg["seq"], cfg["dim"], cfg["vocab"], cfg["heads"]
    hidden = [(torch.randn(B, S, D, generator=g) / D**0.5).to(dev).requires_grad_() for _ in range(H)]
    W = (torch.randn(V, D, generator=g) * 0.02).to(dev).requires_grad_()
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[:, : S // 4] = IGNORE_INDEX  # a prompt quarter, as in instruction data
    weights = torch.rand(B, S, generator=g) * 2
    return hidden, W, labels.to(dev), weights.to(dev)


def _step(fn, hidden, W, labels, weights, H) -> float:
    for t in (*hidden, W):
        t.grad = None
    loss = fn(hidden, W, labels, weights, H)
    loss.backward()
    return loss.item()


def _ratio(x: float, y: float) -> float:
    return x / y if y > 0 else float("nan")


def _rss(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024


def memory_worker(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(cfg["threads"])
    fn = _build_methods([cfg["method"]])[cfg["method"]]
    if isinstance(fn, str):
        return {"skipped": fn}
    hidden, W, labels, weights = _inputs(cfg)
    dev = torch.device(cfg["device"])
    _step(fn, hidden, W, labels, weights, cfg["heads"])  # warm-up (compilation, kernels)
    for t in (*hidden, W):
        t.grad = None
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    loss = _step(fn, hidden, W, labels, weights, cfg["heads"])
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss("VmHWM")
    return {"peak_bytes": peak - before, "loss": loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (all methods in one process)")
    ap.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per method")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every method")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(memory_worker(json.loads(a.worker))))
        return
    import torch

    torch.set_num_threads(a.threads)
    cfg = {k: getattr(a, k) for k in ("device", "batch", "seq", "dim", "vocab", "heads", "threads")}
    bench.print_header("mtp_ce", {d: bench.version(d) for d in PEER_DISTS.values()})
    print(f"setup: {cfg}, fp32")
    fns = _build_methods(a.methods)
    for name, fn in list(fns.items()):
        if isinstance(fn, str):
            print(f"{name}: skipped: {fn}")
            del fns[name]
    hidden, W, labels, weights = _inputs(cfg)
    losses = {}
    for name, fn in list(fns.items()):
        try:
            losses[name] = _step(fn, hidden, W, labels, weights, a.heads)
        except Exception as e:  # noqa: BLE001
            print(f"{name}: skipped: fails on {a.device}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            del fns[name]
    ones = torch.ones_like(weights)
    from wmtp.losses.mtp import mtp_cross_entropy

    unweighted = float(mtp_cross_entropy(hidden, W, labels, weights=ones).loss)
    for name, loss in losses.items():
        ref = unweighted if name == "torchtune" else losses["wmtp"]
        print(f"{name:12s} loss {loss:.6f} ({'unweighted' if name == 'torchtune' else 'weighted'}; "
              f"|diff| to wmtp {abs(loss - ref):.2e})")
        assert abs(loss - ref) < 1e-3 * max(1.0, abs(ref)), f"{name} computes a different loss"

    # Time: round-robin in this process.
    times = bench.round_robin({n: (lambda fn=fn: _step(fn, hidden, W, labels, weights, a.heads))
                               for n, fn in fns.items()}, a.repeats,
                              sync=torch.cuda.synchronize if a.device == "cuda" else None)
    tstats = {n: bench.summarize(t) for n, t in times.items()}
    # Memory: fresh processes, round-robin.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    mem: dict[str, list[float]] = {n: [] for n in fns}
    names = list(fns)
    for r in range(a.memory_repeats):
        for n in bench.rotated(names, r):
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps({**cfg, "method": n})],
                                  capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                sys.exit(f"{n} memory worker failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            mem[n].append(res["peak_bytes"] / 2**20)
    mstats = {n: bench.summarize(m) for n, m in mem.items()}
    for n in fns:
        m, t = mstats[n], tstats[n]
        print(f"{n:12s} peak {m['median']:8.1f} MiB (min–max {m['min']:.1f}–{m['max']:.1f}, n={m['n']})  "
              f"step {bench.fmt_ms(t)}")
    peers = [n for n in fns if n != "wmtp"]
    for n in peers:
        r = bench.summarize(bench.paired_ratios(times[n], times["wmtp"]))
        print(f"wmtp vs {n:12s}: memory ÷{_ratio(mstats[n]['median'], mstats['wmtp']['median']):.2f} "
              f"(wmtp {mstats['wmtp']['median']:.0f} MiB vs {mstats[n]['median']:.0f} MiB), "
              f"time: peer/wmtp per-round median {r['median']:.2f} (min–max {r['min']:.2f}–{r['max']:.2f})")
    print(f"loadavg after: {bench.loadavg()}")
    if not peers:
        print("mtp_ce_memory_vs_best_peer: nan")
        return
    best = min(peers, key=lambda n: mstats[n]["median"])
    print(f"lowest-memory peer: {best}")
    print(f"mtp_ce_memory_vs_best_peer: {_ratio(mstats['wmtp']['median'], mstats[best]['median']):.3f}")


if __name__ == "__main__":
    main()

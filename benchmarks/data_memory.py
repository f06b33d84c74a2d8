"""Peak memory: metadata index + an epoch read by offset vs loading every record with pandas.

    OMP_NUM_THREADS=1 python benchmarks/data_memory.py [--records 1000000] [--no-tokenizer]

Makes a JSONL of cheap synthetic records (shaped like the bundled task's: ~5 solutions per
problem, ~330 bytes per line) in a temp dir, then runs each side in a fresh subprocess:

(a) index: build the parquet index in one streaming pass (token counts with the bundled
    tokenizer), load it, and sample one full epoch with the random sampler (samples=all), reading
    every batch of 64 records by byte offset.
(b) pandas: ``pandas.read_json(path, lines=True)``.

Each side reports ``ru_maxrss`` after its imports (the interpreter + library baseline) and at the
end; the ratio compares the increments above each side's own baseline, so neither is charged for
the libraries it imports. Last line: ``index_memory_ratio: X`` (target <= 0.05).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_jsonl(path: Path, n: int) -> None:
    words = ("clamp", "shift", "scale", "count", "filter", "merge", "split", "total")
    with path.open("w") as f:
        for i in range(n):
            p = i // 5
            w = words[p % len(words)]
            c = p % 97
            rec = {
                "problem_id": f"cc-{p:07d}",
                "instruction": (f"Write a Python function `{w}_{p}(xs)` that returns the elements of xs greater than "
                                f"{c}, each multiplied by {c % 7 + 2}.\nExamples:\n{w}_{p}([]) == []\n"
                                f"{w}_{p}([{c + 1}]) == [{(c + 1) * (c % 7 + 2)}]"),
                "input": f"def {w}_{p}(xs):",
                "output": f"def {w}_{p}(xs):\n    return [v * {c % 7 + 2} for v in xs if v > {c + i % 5 - 2}]\n",
                "is_correct": i % 5 < 2, "difficulty": p % 3 + 1,
            }
            f.write(json.dumps(rec) + "\n")


def phase_index(jsonl: str, tokenizer: str | None, batch_size: int = 64) -> dict:
    import numpy as np

    from wmtp.data.index import MetadataIndex, build_index, read_records
    from wmtp.data.samplers import build_sampler
    from wmtp.model.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer) if tokenizer else None
    base = _rss_mb()
    t0 = time.perf_counter()
    res = build_index(jsonl, Path(jsonl).with_suffix(".index.parquet"), tok, progress=False)
    build_s = time.perf_counter() - t0
    after_build = _rss_mb()
    idx = MetadataIndex.load(res.path, source=jsonl)
    sampler = build_sampler("random", idx, samples="all", seed=0)
    n_batches = len(sampler) // batch_size
    t1 = time.perf_counter()
    n_read = 0
    checksum = 0
    for _ in range(n_batches):
        rows = sampler.next(batch_size)
        recs = read_records(jsonl, idx.offset[rows], idx.length[rows])
        n_read += len(recs)
        checksum += sum(r.is_correct for r in recs)
    read_s = time.perf_counter() - t1
    assert checksum == int(np.sum(idx.is_correct[sampler.rank_order(0)[: n_read]]))
    return {"base_mb": base, "after_build_mb": after_build, "peak_mb": _rss_mb(), "build_s": build_s,
            "records": res.records, "read_records": n_read, "read_s": read_s}


def phase_pandas(jsonl: str) -> dict:
    import pandas as pd

    base = _rss_mb()
    t0 = time.perf_counter()
    df = pd.read_json(jsonl, lines=True)
    return {"base_mb": base, "peak_mb": _rss_mb(), "load_s": time.perf_counter() - t0, "records": len(df)}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--no-tokenizer", action="store_true", help="index without token counts")
    ap.add_argument("--phase", choices=("index", "pandas"), help=argparse.SUPPRESS)
    ap.add_argument("--jsonl", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase == "index":
        print(json.dumps(phase_index(a.jsonl, a.tokenizer)))
        return
    if a.phase == "pandas":
        print(json.dumps(phase_pandas(a.jsonl)))
        return

    with tempfile.TemporaryDirectory(prefix="wmtp-data-memory-") as tmp:
        jsonl = Path(tmp) / "records.jsonl"
        t0 = time.perf_counter()
        make_jsonl(jsonl, a.records)
        size_mb = jsonl.stat().st_size / 2**20
        print(f"generated {a.records} records ({size_mb:.0f} MiB) in {time.perf_counter() - t0:.1f}s")
        child = ["--jsonl", str(jsonl)]
        if not a.no_tokenizer:
            from wmtp.data.bundled import ensure_bundled

            child += ["--tokenizer", str(ensure_bundled(Path(tmp) / "cache", n_problems=200, seed=0).tokenizer)]
        ix = _child(["--phase", "index", *child])
        pd_ = _child(["--phase", "pandas", "--jsonl", str(jsonl)])
    ix_mb = ix["peak_mb"] - ix["base_mb"]
    pd_mb = pd_["peak_mb"] - pd_["base_mb"]
    print(f"index build: {ix['records']} records in {ix['build_s']:.1f}s "
          f"({ix['records'] / ix['build_s']:,.0f} records/s, token counts: {not a.no_tokenizer})")
    print(f"epoch read by offset: {ix['read_records']} records in {ix['read_s']:.1f}s "
          f"({ix['read_records'] / ix['read_s']:,.0f} records/s, random order, batches of 64)")
    print(f"index+epoch peak RSS: {ix['peak_mb']:.0f} MiB (imports baseline {ix['base_mb']:.0f} MiB, "
          f"increment {ix_mb:.0f} MiB; after build {ix['after_build_mb'] - ix['base_mb']:.0f} MiB)")
    print(f"pandas.read_json peak RSS: {pd_['peak_mb']:.0f} MiB (imports baseline {pd_['base_mb']:.0f} MiB, "
          f"increment {pd_mb:.0f} MiB; load {pd_['load_s']:.1f}s)")
    print(f"raw peak ratio (baselines included): {ix['peak_mb'] / pd_['peak_mb']:.3f}")
    print(f"index_memory_ratio: {ix_mb / pd_mb:.4f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

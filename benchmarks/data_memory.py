"""Peak memory: wmtp's metadata index + an epoch read by offset vs a byte-offset array doing the
same, and vs loading every record with pandas.

    OMP_NUM_THREADS=1 python benchmarks/data_memory.py [--records 500000] [--repeats 3] [--token-counts]

Makes a JSONL of cheap synthetic records (shaped like the bundled task's: ~5 solutions per
problem, ~330 bytes per line) in a temp dir, then runs each side in a fresh subprocess, the three
sides round-robin `--repeats` times:

(a) index: build wmtp's parquet index in one streaming pass (token counts only with
    `--token-counts`, which the peer does not compute), load it, and sample one full epoch with
    the random sampler (samples=all), reading every batch of 64 records by byte offset.
(b) offsets: the byte-offset array a user would write instead: one pass over the file collecting
    numpy int64 offsets + int32 lengths and a small metadata array (is_correct, difficulty,
    problem-id code) through `array.array` buffers, then the same epoch: a random permutation,
    batches of 64 read with `os.pread` + `json.loads`.
(c) pandas: ``pandas.read_json(path, lines=True)``.

Each side reports its peak RSS (VmHWM) after its imports (the interpreter + library baseline) and at the
end; the ratios compare the increments above each side's own baseline, so neither is charged for
the libraries it imports. Last line: ``index_memory_vs_offset_array: X`` (wmtp's increment ÷
the byte-offset array's; > 1 means the offset array needs less).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench  # noqa: E402


def _rss_mb() -> float:
    """Peak RSS of this process image (VmHWM). Not `ru_maxrss`: Linux carries that across
    fork + exec, so a child would inherit its parent's peak."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024


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


def phase_offsets(jsonl: str, batch_size: int = 64) -> dict:
    """The byte-offset array: offsets/lengths + a small metadata array, then the same epoch."""
    import array

    import numpy as np

    base = _rss_mb()
    t0 = time.perf_counter()
    offsets, lengths = array.array("q"), array.array("i")
    correct, difficulty, problem = array.array("b"), array.array("b"), array.array("i")
    problem_codes: dict[str, int] = {}
    pos = 0
    with open(jsonl, "rb") as f:
        for line in f:
            rec = json.loads(line)
            offsets.append(pos)
            lengths.append(len(line.rstrip(b"\r\n")))
            correct.append(bool(rec["is_correct"]))
            difficulty.append(int(rec.get("difficulty", 0)))
            problem.append(problem_codes.setdefault(rec["problem_id"], len(problem_codes)))
            pos += len(line)
    off = np.frombuffer(offsets, dtype=np.int64)
    ln = np.frombuffer(lengths, dtype=np.int32)
    meta = np.zeros(len(off), dtype=[("is_correct", "?"), ("difficulty", "i1"), ("problem", "i4")])
    meta["is_correct"], meta["difficulty"], meta["problem"] = correct, difficulty, problem
    del correct, difficulty, problem
    build_s = time.perf_counter() - t0
    after_build = _rss_mb()
    order = np.random.default_rng(0).permutation(len(off))
    t1 = time.perf_counter()
    n_read = checksum = 0
    with open(jsonl, "rb") as f:
        fd = f.fileno()
        for i in range(len(order) // batch_size):
            rows = order[i * batch_size:(i + 1) * batch_size]
            recs = [json.loads(os.pread(fd, int(ln[r]), int(off[r]))) for r in rows]
            n_read += len(recs)
            checksum += sum(r["is_correct"] for r in recs)
    read_s = time.perf_counter() - t1
    assert checksum == int(meta["is_correct"][order[:n_read]].sum())
    return {"base_mb": base, "after_build_mb": after_build, "peak_mb": _rss_mb(), "build_s": build_s,
            "records": len(off), "read_records": n_read, "read_s": read_s}


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
    ap.add_argument("--records", type=int, default=500_000)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per side, round-robin")
    ap.add_argument("--token-counts", action="store_true",
                    help="wmtp's index also counts tokens with the bundled tokenizer (the peer does not)")
    ap.add_argument("--phase", choices=("index", "offsets", "pandas"), help=argparse.SUPPRESS)
    ap.add_argument("--jsonl", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase == "index":
        print(json.dumps(phase_index(a.jsonl, a.tokenizer)))
        return
    if a.phase == "offsets":
        print(json.dumps(phase_offsets(a.jsonl)))
        return
    if a.phase == "pandas":
        print(json.dumps(phase_pandas(a.jsonl)))
        return

    bench.print_header("data_memory", {"pandas": bench.version("pandas"), "numpy": bench.version("numpy")})
    runs: dict[str, list[dict]] = {"index": [], "offsets": [], "pandas": []}
    with tempfile.TemporaryDirectory(prefix="wmtp-data-memory-") as tmp:
        jsonl = Path(tmp) / "records.jsonl"
        t0 = time.perf_counter()
        make_jsonl(jsonl, a.records)
        size_mb = jsonl.stat().st_size / 2**20
        print(f"generated {a.records} records ({size_mb:.0f} MiB) in {time.perf_counter() - t0:.1f}s")
        child = {"index": ["--phase", "index", "--jsonl", str(jsonl)],
                 "offsets": ["--phase", "offsets", "--jsonl", str(jsonl)],
                 "pandas": ["--phase", "pandas", "--jsonl", str(jsonl)]}
        if a.token_counts:
            from wmtp.data.bundled import ensure_bundled

            child["index"] += ["--tokenizer",
                               str(ensure_bundled(Path(tmp) / "cache", n_problems=200, seed=0).tokenizer)]
        names = list(runs)
        for r in range(a.repeats):
            for n in names[r % 3:] + names[: r % 3]:
                for stale in Path(tmp).glob("*.index.parquet*"):
                    stale.unlink()
                runs[n].append(_child(child[n]))
    inc = {n: [x["peak_mb"] - x["base_mb"] for x in rs] for n, rs in runs.items()}
    st = {n: bench.summarize(v) for n, v in inc.items()}

    def med(n: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[n])

    for n in ("index", "offsets"):
        print(f"{n:8s} build: {runs[n][0]['records']} records, median {med(n, 'build_s'):.1f}s; epoch read by "
              f"offset: {runs[n][0]['read_records']} records, median {runs[n][0]['read_records'] / med(n, 'read_s'):,.0f}"
              f" records/s; after build +{med(n, 'after_build_mb') - med(n, 'base_mb'):.0f} MiB")
    print(f"pandas   load: median {med('pandas', 'load_s'):.1f}s")
    for n in names:
        s = st[n]
        print(f"{n:8s} peak RSS above imports: median {s['median']:7.0f} MiB (min–max {s['min']:.0f}–{s['max']:.0f}, "
              f"n={s['n']}; imports baseline {med(n, 'base_mb'):.0f} MiB)")
    def ratio(x: float, y: float) -> float:
        return x / y if y > 0 else float("nan")

    per_round = [ratio(i, o) for i, o in zip(inc["index"], inc["offsets"])]
    print(f"token counts in wmtp's index: {a.token_counts}")
    print(f"index_memory_vs_pandas: {ratio(st['index']['median'], st['pandas']['median']):.4f}")
    print(f"index ÷ offset array per round: {min(per_round):.3f}–{max(per_round):.3f}")
    print(f"loadavg after: {bench.loadavg()}")
    print(f"index_memory_vs_offset_array: {ratio(st['index']['median'], st['offsets']['median']):.3f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

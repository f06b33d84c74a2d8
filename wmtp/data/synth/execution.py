"""Label candidate programs by running hidden tests (trusted, generated code; process pool + timeout).

The reference program (the family's first correct variant) is run on the test inputs to get the
expected outputs; the hidden test is a HumanEval-style ``check(candidate)`` written from call
records (one ``assert candidate(INPUT) == EXPECTED`` per input, ``wmtp.data.calls``), so an
evaluation reads it back as call records and judges model samples outside their sandbox. Labels
here run ``check`` in-process: the candidates are the generator's own template code, not a model's.
Each candidate passes iff ``check`` returns without an exception within the time limit.
"""

from __future__ import annotations

import ast
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

from wmtp.data.calls import Call, check_source


@dataclass(frozen=True)
class ExecJob:
    entry: str
    reference: str  # program source
    inputs: tuple[str, ...]  # argument literals, e.g. "[1, 2]"
    candidates: tuple[str, ...]  # program sources


@dataclass(frozen=True)
class ExecResult:
    expected: tuple[str, ...]  # repr of the reference output per input
    test: str  # source defining check(candidate)
    passed: tuple[bool, ...]  # per candidate


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Timeout()


def _call_limited(fn, timeout_s: float):
    # SIGALRM works in the main thread only: pool workers run tasks there; elsewhere run unguarded.
    use_alarm = timeout_s > 0 and hasattr(signal, "setitimer") and _in_main_thread()
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return fn()
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def build_check(entry_inputs: Sequence[str], expected: Sequence[str]) -> str:
    """The hidden test from argument literals and the reference's output reprs (plain values)."""
    calls = [Call(i, "==", ast.literal_eval(e)) for i, e in zip(entry_inputs, expected, strict=True)]
    return check_source(calls)


def passes(program: str, entry: str, test: str, timeout_s: float = 1.0) -> bool:
    """Run ``check(program's entry)``; any exception, missing entry point or timeout is a failure."""
    def run() -> bool:
        ns: dict = {}
        exec(compile(program, "<candidate>", "exec"), ns)  # noqa: S102 - trusted generated code
        tns: dict = {}
        exec(compile(test, "<test>", "exec"), tns)  # noqa: S102
        tns["check"](ns[entry])
        return True
    try:
        return _call_limited(run, timeout_s)
    except BaseException as e:  # noqa: BLE001 - every failure mode of a candidate is "incorrect"
        if isinstance(e, KeyboardInterrupt):
            raise
        return False


def run_job(job: ExecJob, timeout_s: float = 1.0) -> ExecResult:
    ns: dict = {}
    exec(compile(job.reference, "<reference>", "exec"), ns)  # noqa: S102
    ref = ns[job.entry]
    expected = tuple(repr(_call_limited(lambda a=a: ref(eval(a)), timeout_s)) for a in job.inputs)  # noqa: S307
    test = build_check(job.inputs, expected)
    return ExecResult(expected, test, tuple(passes(c, job.entry, test, timeout_s) for c in job.candidates))


def _run_chunk(jobs: list[ExecJob], timeout_s: float) -> list[ExecResult]:
    return [run_job(j, timeout_s) for j in jobs]


def run_jobs(jobs: Sequence[ExecJob], workers: int | None = None, timeout_s: float = 1.0) -> list[ExecResult]:
    """Run all jobs; ``workers=0`` runs in this process, otherwise a process pool (default 2)."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    jobs = list(jobs)
    if workers <= 0 or len(jobs) < 50:
        return _run_chunk(jobs, timeout_s)
    n_chunks = workers * 4
    size = -(-len(jobs) // n_chunks)
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    # forkserver: a clean child, safe even when the parent holds threads (torch, Ray).
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("forkserver")) as pool:
        parts = list(pool.map(_run_chunk, chunks, [timeout_s] * len(chunks)))
    return [r for part in parts for r in part]

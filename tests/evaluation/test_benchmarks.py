"""Benchmark loaders: HumanEval (all 164, canonical solutions pass in the sandbox), synthetic, stdio."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from wmtp.evaluation.benchmarks import (
    HUMANEVAL_STOP,
    BenchmarkError,
    load_benchmark,
    load_humaneval,
    load_jsonl_tasks,
)
from wmtp.evaluation.runner import execute_completion
from wmtp.evaluation.sandbox import SandboxConfig, run_programs


def test_humaneval_all_164_canonical_solutions_pass():
    tasks = load_humaneval()
    assert len(tasks) == 164 and len({t.task_id for t in tasks}) == 164
    assert all(t.mode == "humaneval" and t.stop == HUMANEVAL_STOP for t in tasks)
    t = tasks[0]
    assert t.program("X") == t.prompt + "X\n" + t.test + f"\ncheck({t.entry_point})\n"
    assert t.code("X") == t.prompt + "X" and t.calls  # call records: the sandbox never sees the test
    config = SandboxConfig(timeout_s=20.0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda t: execute_completion(t, t.canonical_solution, config), tasks))
    failed = [(t.task_id, r.status, r.message) for t, r in zip(tasks, results) if not r.passed]
    assert failed == []
    assert sum(r.verdict_by == "parent" for r in results) == 157  # the other 7 keep the in-process check
    broken = run_programs([t.program("    return None\n") for t in tasks[:10]], workers=2)
    assert not any(r.passed for r in broken)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SYNTH = {
    "task_id": "synth/0", "prompt": "### Instruction:\nWrite add_one.\n\n### Response:\n",
    "entry_point": "add_one", "completion_is_program": True,
    "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n",
    "canonical_solution": "def add_one(x):\n    return x + 1\n",
}
STDIO = {"task_id": "cc/0", "prompt": "Read two ints, print their sum.\n", "inputs": ["1 2\n", "5 5\n"],
         "outputs": ["3\n", "10\n"], "canonical_solution": "a, b = map(int, input().split())\nprint(a + b)\n"}


def test_synthetic_program_mode(tmp_path):
    path = _write(tmp_path / "test_eval.jsonl", [SYNTH, {**SYNTH, "task_id": "synth/1"}])
    tasks = load_benchmark("synthetic", path)
    assert [t.task_id for t in tasks] == ["synth/0", "synth/1"] and tasks[0].mode == "program"
    assert tasks[0].stop == ()
    cfg = SandboxConfig()
    assert execute_completion(tasks[0], SYNTH["canonical_solution"], cfg).passed
    assert not execute_completion(tasks[0], "def add_one(x):\n    return x + 2\n", cfg).passed
    assert len(load_benchmark("synthetic", path, limit=1)) == 1


def test_stdio_mode_runs_every_case(tmp_path):
    tasks = load_jsonl_tasks(_write(tmp_path / "cc.jsonl", [STDIO]))
    assert tasks[0].mode == "stdio"
    cfg = SandboxConfig()
    assert execute_completion(tasks[0], STDIO["canonical_solution"], cfg).passed
    wrong = execute_completion(tasks[0], "a, b = map(int, input().split())\nprint(3)\n", cfg)
    assert wrong.status == "failed" and wrong.message == "case 1: wrong answer"


def test_bad_files_name_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(SYNTH) + "\n{not json\n")
    with pytest.raises(BenchmarkError, match=r"bad.jsonl:2: invalid JSON"):
        load_jsonl_tasks(bad)
    missing = _write(tmp_path / "missing.jsonl", [{"task_id": "x", "prompt": "p"}])
    with pytest.raises(BenchmarkError, match=r"missing.jsonl:1: missing key\(s\) \['test', 'entry_point'\]"):
        load_jsonl_tasks(missing)
    with pytest.raises(BenchmarkError, match="unknown benchmark 'mbpp'; allowed"):
        load_benchmark("mbpp")
    with pytest.raises(BenchmarkError, match="no such file"):
        load_jsonl_tasks(tmp_path / "nope.jsonl")

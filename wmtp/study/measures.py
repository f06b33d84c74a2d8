"""What `wmtp study` measures about one finished run (docs/RESULTS.md), in the process that drove
it (no Ray). Every measure is kept per item where it has items, so arms compare paired:

- `pass@1`: greedy pass@1 of every test task (`items["pass@1"][task_id]`, and by family);
- `ce_head<k>`: unweighted CE of head k on every correct validation solution (the same set for every
  arm and seed; `items["ce_head<k>"][solution]`), and by quarter of the response (scalars);
- the token weights the run trained with (means over its logged steps of `train/weights/*`: ESS,
  Spearman with relative position, mean per quarter, clipped fraction), and, for weighted arms, the
  within-solution AUC of the run's weights at decisive tokens (`weighting.diagnostics.within_solution_auc`,
  exact null 0.5): on incorrect solutions (a weighting that sees the bug gives it *low* weight:
  below 0.5) and on the differing tokens of their closest correct variants (upweighting what makes
  a solution correct: above 0.5). The weights come from `weighting.weights.value_weights`, the
  function the verifiable recipe trains with, and `weighting.rho1.rho1_weights`;
- `trained_targets`: the targets the policy learned from, counted by replaying the run's batches
  (same sampler, seed and mask), and the cumulative count per step (the x axis of the curves).
"""
# One module (over 300 lines): every measure of one run, from the same export, data and log.

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wmtp.evaluation.decisive import decisive_token_mask
from wmtp.weighting.diagnostics import quarter_of, relative_position, within_solution_auc

WEIGHT_KEYS = ("ess", "position_spearman", "quarter_1", "quarter_2", "quarter_3", "quarter_4", "frac_clipped")


@dataclass
class RunMeasures:
    """One (arm, seed) run: `scalars`, per-item values `items[measure][item id]`, and `curves`
    `key → [(trained targets, value)]`."""

    arm: str
    seed: int
    scalars: dict[str, float] = field(default_factory=dict)
    items: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"arm": self.arm, "seed": self.seed, "scalars": self.scalars, "items": self.items,
                "curves": {k: [list(p) for p in v] for k, v in self.curves.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunMeasures:
        return cls(d["arm"], int(d["seed"]), dict(d["scalars"]), {k: dict(v) for k, v in d["items"].items()},
                   {k: [tuple(p) for p in v] for k, v in d.get("curves", {}).items()})


@dataclass(frozen=True)
class EvalPlan:
    """What `measure_run` evaluates (the spec's `evaluation` section)."""

    benchmark: str = "synthetic"
    path: str | None = None
    max_new_tokens: int = 48
    batch_size: int = 64
    max_tasks: int | None = None
    max_valid_solutions: int | None = None
    decisive_records: int = 256


def family_of(task_id: str) -> str:
    """Template family of a synthetic task id (`<family>-<seed>-<n>`); other benchmarks: the id's
    prefix before `/` (HumanEval/12 → HumanEval)."""
    parts = task_id.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0]
    return task_id.split("/")[0]


# ---------------------------------------------------------------------------------------------
# Held-out pass@1 and validation CE


def test_tasks(cfg: Any, plan: EvalPlan) -> list[Any]:
    """Every held-out task (the first `max_tasks` if set): the run's bundled test split by default."""
    from wmtp.evaluation.benchmarks import load_benchmark

    path = plan.path
    if plan.benchmark == "synthetic" and path is None:
        from wmtp.data.bundled import ensure_bundled

        path = str(ensure_bundled(n_problems=cfg.data.synth_problems, seed=cfg.data.synth_seed).test_eval)
    tasks = load_benchmark(plan.benchmark, path)
    return tasks[:plan.max_tasks] if plan.max_tasks else tasks


def greedy_pass_at_1(model: Any, tokenizer: Any, tasks: Sequence[Any], plan: EvalPlan, seed: int) -> dict[str, float]:
    """`{task_id: 0 or 1}`: greedy pass@1, every completion run against the task's hidden tests."""
    from wmtp.evaluation.runner import evaluate_pass_at_k

    result = evaluate_pass_at_k(model, tokenizer, tasks, n=1, k=[1], temperature=0.0, max_new_tokens=plan.max_new_tokens,
                                batch_size=plan.batch_size, seed=seed, workers=1, n_bootstrap=10)
    return {r["task_id"]: float(r["pass_at_1"]) for r in result.tasks}


def validation_records(cfg: Any, plan: EvalPlan) -> list[Any]:
    """The validation solutions in file order (the first `max_valid_solutions` if set)."""
    from wmtp.data.bundled import ensure_bundled
    from wmtp.data.records import iter_lines_decoded

    valid = cfg.data.valid or ensure_bundled(n_problems=cfg.data.synth_problems, seed=cfg.data.synth_seed).valid
    records = [rec for *_, rec in iter_lines_decoded(valid)]
    return records[:plan.max_valid_solutions] if plan.max_valid_solutions else records


@torch.no_grad()
def validation_ce(policy: Any, tokenizer: Any, records: Sequence[Any], cfg: Any, batch_size: int
                  ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Unweighted CE per head on every correct solution of `records` (ids `v<index>`): per solution
    (`ce_head<k>`) and, pooled over targets, per quarter of the response (`ce_head<k>/q<n>`, by the
    relative position of the target a head predicts)."""
    from wmtp.data.collator import Collator
    from wmtp.losses.alignment import valid_mask
    from wmtp.losses.mtp import mtp_token_losses

    collate = Collator(tokenizer, cfg.data.max_seq_len)
    correct = [(i, r) for i, r in enumerate(records) if r.is_correct]
    per_item: dict[str, dict[str, float]] = {}
    sums: dict[str, list[float]] = {}
    for start in range(0, len(correct), batch_size):
        chunk = correct[start:start + batch_size]
        batch = collate([r for _, r in chunk])
        out = policy(batch.tokens)
        losses = mtp_token_losses(out.hidden, policy.output.weight, batch.labels, cfg.train.loss_chunk_size).double()
        heads = losses.shape[-1]
        valid = valid_mask(batch.labels, heads)  # [B, S, H]: head k at t predicts the target t + k
        quarter = quarter_of(relative_position(batch.labels != -100))  # of each target, token-indexed
        for k in range(heads):
            v = valid[..., k]
            per_row = (losses[..., k] * v).sum(1) / v.sum(1).clamp_min(1)
            items = per_item.setdefault(f"ce_head{k + 1}", {})
            for (i, _), ce, n in zip(chunk, per_row.tolist(), v.sum(1).tolist()):
                if n:
                    items[f"v{i}"] = ce
            q = torch.roll(quarter, -(k + 1), dims=1)  # the quarter of the target head k predicts at t
            for n in range(4):
                sel = v & (q == n)
                acc = sums.setdefault(f"ce_head{k + 1}/q{n + 1}", [0.0, 0.0])
                acc[0] += float((losses[..., k] * sel).sum())
                acc[1] += float(sel.sum())
    return per_item, {k: s / n if n else float("nan") for k, (s, n) in sums.items()}


# ---------------------------------------------------------------------------------------------
# The run's token weights


def logged_weight_means(metrics_jsonl: str | Path) -> dict[str, float]:
    """Means over the logged steps of `train/weights/{ess, position_spearman, quarter_n,
    frac_clipped}` (`weights/<name>`; absent for runs that log none)."""
    vals: dict[str, list[float]] = {}
    for rec in _log_records(metrics_jsonl):
        for name in WEIGHT_KEYS:
            v = rec["metrics"].get(f"train/weights/{name}")
            if isinstance(v, int | float) and math.isfinite(v):
                vals.setdefault(name, []).append(float(v))
    return {f"weights/{k}": float(np.mean(v)) for k, v in vals.items()}


def variant_span(mutant: str, variant: str) -> tuple[int, int]:
    """`[start, end)` characters of the correct `variant` where it differs from `mutant` (the
    variant's side of the edits the data's `decisive_span` marks on the mutant's side)."""
    edits = [(j1, j2) for tag, _, _, j1, j2 in difflib.SequenceMatcher(None, mutant, variant, autojunk=False).get_opcodes()
             if tag != "equal"]
    if not edits:
        return (0, 0)
    start, end = min(j for j, _ in edits), max(j for _, j in edits)
    if start == end:  # the variant lacks characters the mutant has: mark both sides of the gap
        start, end = max(0, start - 1), min(len(variant), end + 1)
    return (start, end)


def decisive_pairs(records: Sequence[Any], limit: int) -> tuple[list[Any], list[tuple[int, int]], list[Any],
                                                                   list[tuple[int, int]]]:
    """The first `limit` incorrect solutions with a decisive span, and for each its closest correct
    variant of the same problem (by difflib ratio) with the span where that variant differs."""
    correct: dict[str, list[Any]] = {}
    for r in records:
        if r.is_correct:
            correct.setdefault(r.problem_id, []).append(r)
    mutants, spans, variants, vspans = [], [], [], []
    for r in records:
        if r.is_correct or not r.decisive_span or r.decisive_span[0] == r.decisive_span[1] or not correct.get(r.problem_id):
            continue
        best = max(correct[r.problem_id],
                   key=lambda v: difflib.SequenceMatcher(None, r.output, v.output, autojunk=False).ratio())
        mutants.append(r)
        spans.append(tuple(r.decisive_span))
        variants.append(best)
        vspans.append(variant_span(r.output, best.output))
        if len(mutants) >= limit:
            break
    return mutants, spans, variants, vspans


@torch.no_grad()
def run_token_weights(cfg: Any, batch: Any, policy: Any, critic: Any = None, reference: Any = None) -> Tensor | None:
    """Target-indexed `[B, S]` weights the run's config gives the response targets of `batch` (all
    of them: the weighting as a diagnostic), or None for a uniform arm. Verifiable: `value_weights`
    of the critic's GAE (or the position control's), with the normaliser's batch statistics and the
    first step's shuffle; Rho-1: head 1's weights from the policy's excess loss over `reference`."""
    from wmtp.weighting.shuffle import step_generator

    mask = batch.labels != -100
    if cfg.recipe == "verifiable":
        from wmtp.evaluation.critic_quality import run_weights
        from wmtp.recipes.experience import critic_experience

        vw = cfg.stage2.value_weighting
        if vw.source == "uniform":
            return None
        scored = critic_experience(critic, batch, gamma=vw.gae_gamma, lam=vw.gae_lambda, reward_mode=vw.reward, version=0)
        assert scored.values_old is not None  # a critic-scored batch carries its values
        return run_weights(vw, scored.values_old, batch, mask, scored.advantages, step_generator(cfg.run.seed, 0, 0))
    if cfg.recipe == "rho1_weighted":
        from wmtp.recipes.rho1_weighted import target_weights

        return target_weights(cfg, policy, reference, batch, step_generator(cfg.run.seed, 0, 0))
    return None


def decisive_weight_aucs(cfg: Any, policy: Any, tokenizer: Any, records: Sequence[Any], plan: EvalPlan,
                         critic: Any = None, reference: Any = None) -> dict[str, float]:
    """`decisive/weights_auc_incorrect` and `decisive/weights_auc_variant`: the within-solution AUC
    of the run's weights at the decisive tokens of incorrect solutions and of their closest correct
    variants ({} for uniform arms and data without decisive spans)."""
    from wmtp.data.collator import Collator

    mutants, spans, variants, vspans = decisive_pairs(records, plan.decisive_records)
    if not mutants or cfg.recipe not in ("verifiable", "rho1_weighted"):
        return {}
    collate = Collator(tokenizer, cfg.data.max_seq_len)
    out: dict[str, float] = {}
    for name, rows, row_spans in (("incorrect", mutants, spans), ("variant", variants, vspans)):
        aucs, counts = [], []
        for start in range(0, len(rows), plan.batch_size):
            batch = collate(list(rows[start:start + plan.batch_size]))
            w = run_token_weights(cfg, batch, policy, critic, reference)
            if w is None:
                return {}
            decisive = decisive_token_mask(tokenizer, batch.tokens, batch.response_start, batch.response_end,
                                           row_spans[start:start + plan.batch_size])
            auc, used = within_solution_auc(w.double(), decisive, batch.labels != -100)
            if used:
                aucs.append(auc * used)
                counts.append(used)
        out[f"decisive/weights_auc_{name}"] = sum(aucs) / sum(counts) if counts else float("nan")
        out[f"decisive/{name}_solutions"] = float(sum(counts))
    return out


# ---------------------------------------------------------------------------------------------
# Trained targets and curves


def trained_targets(cfg: Any) -> list[int]:
    """Cumulative targets the policy learned from after each step `[steps]`, counted by replaying
    the run's training batches (its sampler, seed and `data.draw`) under its policy mask (one
    process; head 1's targets: the labels that are not -100)."""
    from wmtp.data import streams
    from wmtp.parallel import reduce

    data = streams.load_data(cfg)
    stream = streams.train_stream(data.train, cfg, reduce.process_layout(False), samples=streams.drawn_samples(cfg))
    total, out = 0, []
    for _ in range(cfg.train.steps):
        for _ in range(cfg.data.grad_accum):
            total += int((streams.policy_labels(stream.next(), cfg.data.samples) != -100).sum())
        out.append(total)
    return out


def _log_records(metrics_jsonl: str | Path) -> list[dict[str, Any]]:
    path = Path(metrics_jsonl)
    if not path.is_file():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if "step" in r and "metrics" in r]


def read_curves(metrics_jsonl: str | Path, keys: Sequence[str], targets: Sequence[int]
                ) -> dict[str, list[tuple[float, float]]]:
    """`key → [(trained targets after the step, value)]` from a run's JSONL log (the last value per
    step wins)."""
    by_step: dict[int, dict[str, float]] = {}
    for rec in _log_records(metrics_jsonl):
        by_step.setdefault(int(rec["step"]), {}).update(rec["metrics"])
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    for step in sorted(by_step):
        if not 1 <= step <= len(targets):
            continue
        for k in keys:
            v = by_step[step].get(k)
            if isinstance(v, int | float) and math.isfinite(v):
                out[k].append((float(targets[step - 1]), float(v)))
    return out


def measure_run(cfg: Any, arm: str, plan: EvalPlan, critic_dir: str | Path | None = None) -> RunMeasures:
    """Every measure of one finished run (its export in `<run_dir>/export`, its log in
    `<run_dir>/metrics.jsonl`)."""
    from wmtp.checkpoint import load_model, load_value_model
    from wmtp.config.paths import export_dir, run_dir
    from wmtp.model.tokenizer import Tokenizer

    export = export_dir(cfg)
    policy = load_model(export).eval()
    tokenizer = Tokenizer(export / "tokenizer.model")
    torch.manual_seed(cfg.run.seed)
    passed = greedy_pass_at_1(policy, tokenizer, test_tasks(cfg, plan), plan, cfg.run.seed)
    records = validation_records(cfg, plan)
    ce_items, ce_quarters = validation_ce(policy, tokenizer, records, cfg, plan.batch_size)
    targets = trained_targets(cfg)
    scalars = {"pass@1": float(np.mean(list(passed.values()))) if passed else float("nan"),
               **{k: float(np.mean(list(v.values()))) for k, v in ce_items.items()}, **ce_quarters,
               "trained_targets": float(targets[-1]) if targets else 0.0,
               **logged_weight_means(run_dir(cfg) / "metrics.jsonl")}
    critic = load_value_model(critic_dir).eval() if cfg.recipe == "verifiable" and critic_dir else None
    reference = load_model(cfg.rho1.reference).eval() if cfg.recipe == "rho1_weighted" else None
    scalars.update(decisive_weight_aucs(cfg, policy, tokenizer, records, plan, critic, reference))
    curves = read_curves(run_dir(cfg) / "metrics.jsonl", ["val/ce", "train/loss"], targets)
    return RunMeasures(arm, cfg.run.seed, scalars, {"pass@1": passed, **ce_items}, curves)


__all__ = ["EvalPlan", "RunMeasures", "decisive_pairs", "decisive_weight_aucs", "family_of", "greedy_pass_at_1",
           "logged_weight_means", "measure_run", "read_curves", "run_token_weights", "test_tasks", "trained_targets",
           "validation_ce", "validation_records", "variant_span"]

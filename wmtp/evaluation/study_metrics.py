"""The measures of `wmtp study` (docs/RESULTS.md), computed from one finished run and aggregated
over seeds and tasks.

Per run (`measure_run`, in the process that drove the run; no Ray):
- pass@1 (greedy) and pass@k (sampled) on held-out tasks, per task, tagged by template family;
- decisive-token weight share: on incorrect validation solutions whose `decisive_span` says where
  they differ from a correct one, the share of the method's token-weight mass on those tokens vs
  their share of the tokens (lift = mass share / token share; 1 = no preference), and the AUC of
  the weights separating decisive from other tokens (0.5 = no information; < 0.5 = decisive tokens
  get *less* weight, which is what a critic that has seen the error should do);
- curves and time-to-threshold from the run's `metrics.jsonl` (tokens until validation CE falls to,
  or pass@1 rises to, a level).

Aggregation (`bootstrap_ci`): mean with a 95% percentile bootstrap that resamples seeds, and tasks
within each resampled seed where a measure is per task (pass@k).
"""
# One module (over 300 lines): every measure a study records for one run, computed from the same export and logs.

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wmtp.evaluation.decisive import char_offsets, decisive_token_mask
from wmtp.evaluation.paired import hierarchical_bootstrap
from wmtp.weighting.diagnostics import rank_auc

# ---------------------------------------------------------------------------------------------
# Decisive tokens


def weight_share(weights: Tensor, decisive: Tensor, mask: Tensor) -> dict[str, float]:
    """weights, decisive, mask `[B, S]` (target-indexed) → mass share of decisive tokens, their
    token share, lift (= mass / token share) and the AUC of the weights for decisive vs not."""
    w = weights.double()[mask]
    d = decisive[mask].bool()
    if d.sum() == 0 or (~d).sum() == 0 or w.sum() <= 0:
        return {"mass_share": float("nan"), "token_share": float("nan"), "lift": float("nan"), "auc": float("nan")}
    mass = float(w[d].sum() / w.sum())
    share = float(d.double().mean())
    return {"mass_share": mass, "token_share": share, "lift": mass / share, "auc": rank_auc(w, d)}


# ---------------------------------------------------------------------------------------------
# Curves and thresholds


def read_curves(metrics_jsonl: str | Path, keys: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
    """`key → [(trained targets, value)]` from a run's JSONL log (last value per step wins; the
    targets are the latest `perf/targets_seen` at or before the step: prompts and masked solutions
    are no training budget)."""
    by_step: dict[int, dict[str, float]] = {}
    path = Path(metrics_jsonl)
    if not path.is_file():
        return {k: [] for k in keys}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "step" in rec and "metrics" in rec:
            by_step.setdefault(int(rec["step"]), {}).update(rec["metrics"])
    tokens, out = 0.0, {k: [] for k in keys}
    for step in sorted(by_step):
        m = by_step[step]
        tokens = m.get("perf/targets_seen", tokens)
        for k in keys:
            if k in m and isinstance(m[k], int | float) and math.isfinite(m[k]):
                out[k].append((float(tokens), float(m[k])))
    return out


def time_to_threshold(curve: Sequence[tuple[float, float]], level: float, mode: str) -> float | None:
    """Tokens at the first point where the value is <= level (mode "min") or >= level ("max");
    None if it never gets there."""
    for tokens, value in curve:
        if (value <= level) if mode == "min" else (value >= level):
            return tokens
    return None


# ---------------------------------------------------------------------------------------------
# Aggregation


def bootstrap_ci(values: Sequence[Sequence[float]], *, n_bootstrap: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of `values[seed][unit]` (units: tasks, or one value per run): the mean
    over all units of all seeds, and a percentile bootstrap resampling seeds, then units within
    each resampled seed. NaN entries are dropped; (nan, nan, nan) when nothing is left."""
    rows = [np.asarray([v for v in row if v is not None and math.isfinite(v)], dtype=np.float64) for row in values]
    rows = [r for r in rows if r.size]
    if not rows:
        return (float("nan"),) * 3
    mean = float(np.mean(np.concatenate(rows)))
    if len(rows) == 1 and rows[0].size == 1:
        return mean, mean, mean
    stats = hierarchical_bootstrap(rows, n_bootstrap, seed)
    alpha = (1 - confidence) / 2
    return mean, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


@dataclass
class RunMeasures:
    """What one (method, seed) run measured; `per_task` holds per-task lists (pass@k by family)."""

    method: str
    seed: int
    scalars: dict[str, float] = field(default_factory=dict)
    per_task: dict[str, list[float]] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "scalars": self.scalars, "per_task": self.per_task,
                "curves": {k: [list(p) for p in v] for k, v in self.curves.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunMeasures:
        return cls(d["method"], int(d["seed"]), dict(d["scalars"]), {k: list(v) for k, v in d["per_task"].items()},
                   {k: [tuple(p) for p in v] for k, v in d.get("curves", {}).items()})


def drop_empty_validation(run: RunMeasures, thresholds: Sequence[tuple[str, float, str]] = ()) -> RunMeasures:
    """A validation round whose batches hold no policy target (e.g. only incorrect solutions with
    `data.samples=correct`) reports CE 0, which is no measurement: such values become NaN, such
    curve points are dropped, and the val/ce time-to-threshold is recomputed from what is left."""
    scalars = {k: (float("nan") if k.startswith("val/ce") and v == 0.0 else v) for k, v in run.scalars.items()}
    curves = {k: ([p for p in v if p[1] != 0.0] if k.startswith("val/ce") else v) for k, v in run.curves.items()}
    for key, level, mode in thresholds:
        if key.startswith("val/ce"):
            reached = time_to_threshold(curves.get(key, []), level, mode)
            scalars[f"tokens_to/{key}{'<=' if mode == 'min' else '>='}{level:g}"] = (
                float("nan") if reached is None else reached)
    return RunMeasures(run.method, run.seed, scalars, run.per_task, curves)


def family_of(task_id: str) -> str:
    """Template family of a synthetic task id (`<family>-<seed>-<n>`); other benchmarks: the id's
    prefix before `/` (HumanEval/12 → HumanEval)."""
    parts = task_id.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0]
    return task_id.split("/")[0]


def aggregate(runs: Sequence[RunMeasures], measures: Sequence[str], *, n_bootstrap: int = 1000
              ) -> dict[str, dict[str, tuple[float, float, float, int]]]:
    """`method → measure → (mean, low, high, n runs with a value)`."""
    table: dict[str, dict[str, tuple[float, float, float, int]]] = {}
    for method in dict.fromkeys(r.method for r in runs):
        mine = sorted((r for r in runs if r.method == method), key=lambda r: r.seed)
        row = {}
        for m in measures:
            values = [r.per_task[m] if m in r.per_task else [r.scalars.get(m, float("nan"))] for r in mine]
            n = sum(1 for v in values if any(x is not None and math.isfinite(x) for x in v))
            row[m] = (*bootstrap_ci(values, n_bootstrap=n_bootstrap), n)
        table[method] = row
    return table


def format_cell(cell: tuple[float, float, float, int], digits: int = 3) -> str:
    mean, lo, hi, n = cell
    if not math.isfinite(mean):
        return "—"
    big = max(abs(mean), abs(lo), abs(hi)) >= 1000
    fmt = (lambda x: f"{x:.3g}") if big else (lambda x: f"{x:.{digits}f}")
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]" + ("" if n == 0 else f" n={n}")


def format_table(table: Mapping[str, Mapping[str, tuple[float, float, float, int]]], measures: Sequence[str],
                 markdown: bool = False) -> str:
    """method × measure: `mean [95% CI low, high] n=runs`."""
    header = ["method", *measures]
    rows = [[method, *(format_cell(cells[m]) for m in measures)] for method, cells in table.items()]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows])


def plot_curves(runs: Sequence[RunMeasures], keys: Sequence[tuple[str, str]], path: str | Path,
                n_bootstrap: int = 300) -> Path:
    """One panel per `(metric key, y label)`: mean over seeds against tokens, one line per method,
    with a 95% bootstrap band over seeds (points at each run's evaluation steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.2))
    axes = np.atleast_1d(axes)
    for ax, (key, label) in zip(axes, keys):
        for method in dict.fromkeys(r.method for r in runs):
            curves = [r.curves.get(key, []) for r in runs if r.method == method]
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            x = np.array([np.mean([c[i][0] for c in curves]) for i in range(n)])
            ys = np.array([[c[i][1] for i in range(n)] for c in curves])
            ci = np.array([bootstrap_ci([[v] for v in ys[:, i]], n_bootstrap=n_bootstrap) for i in range(n)])
            (line,) = ax.plot(x, ci[:, 0], marker="o", ms=3, label=method)
            ax.fill_between(x, ci[:, 1], ci[:, 2], color=line.get_color(), alpha=0.15)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------
# One run's measures (after training, in the process that drove it)


@dataclass(frozen=True)
class EvalPlan:
    """What `measure_run` evaluates (the study spec's `evaluation` section, resolved)."""

    benchmarks: tuple[tuple[str, str | None], ...]  # (name, path or None = the run's bundled test split)
    tasks_per_family: int | None = None
    n_samples: int = 5
    ks: tuple[int, ...] = (1, 5)
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    batch_size: int = 32
    decisive_records: int = 64
    thresholds: tuple[tuple[str, float, str], ...] = ()  # (curve key, level, "min"|"max")


def eval_tasks(cfg: Any, plan: EvalPlan) -> list[Any]:
    """The held-out tasks of every benchmark, at most `tasks_per_family` per family (in file order)."""
    from wmtp.evaluation.benchmarks import load_benchmark

    tasks: list[Any] = []
    for name, path in plan.benchmarks:
        if name == "synthetic" and path is None:
            from wmtp.data.bundled import ensure_bundled

            path = str(ensure_bundled(n_problems=cfg.data.synth_problems, seed=cfg.data.synth_seed).test_eval)
        loaded = load_benchmark(name, path)
        if plan.tasks_per_family:
            seen: dict[str, int] = {}
            kept = []
            for t in loaded:
                fam = family_of(t.task_id)
                if seen.get(fam, 0) < plan.tasks_per_family:
                    seen[fam] = seen.get(fam, 0) + 1
                    kept.append(t)
            loaded = kept
        tasks += loaded
    return tasks


def pass_at_k_per_task(model: Any, tokenizer: Any, tasks: Sequence[Any], plan: EvalPlan, seed: int
                       ) -> dict[str, list[float]]:
    """`pass@1` (greedy) and `pass@k` (k > 1, sampled at the plan's temperature) per task, overall
    and per family (`pass@1/<family>`)."""
    from wmtp.evaluation.runner import evaluate_pass_at_k

    out: dict[str, list[float]] = {}
    families = [family_of(t.task_id) for t in tasks]

    def add(name: str, values: list[float]) -> None:
        out[name] = values
        for fam in sorted(set(families)):
            out[f"{name}/{fam}"] = [v for v, f in zip(values, families) if f == fam]

    greedy = evaluate_pass_at_k(model, tokenizer, tasks, n=1, k=[1], temperature=0.0,
                                max_new_tokens=plan.max_new_tokens, batch_size=plan.batch_size, seed=seed,
                                workers=1, n_bootstrap=10)
    add("pass@1", [float(r["pass_at_1"]) for r in greedy.tasks])
    sampled_ks = [k for k in plan.ks if k > 1]
    if sampled_ks:
        sampled = evaluate_pass_at_k(model, tokenizer, tasks, n=plan.n_samples, k=sampled_ks,
                                     temperature=plan.temperature, top_p=plan.top_p,
                                     max_new_tokens=plan.max_new_tokens, batch_size=plan.batch_size,
                                     seed=seed, workers=1, n_bootstrap=10)
        for k in sampled_ks:
            add(f"pass@{k}", [float(r[f"pass_at_{k}"]) for r in sampled.tasks])
    return out


@torch.no_grad()
def method_token_weights(cfg: Any, batch: Any, policy: Any, critic_dir: str | Path | None) -> Tensor | None:
    """Target-indexed `[B, S]` weights the run's method gives the response tokens of `batch` (all
    of them, correct or not: the weighting as a diagnostic), or None for uniform methods.
    verifiable: GAE weights of the critic in `critic_dir` (the normaliser's batch statistics);
    rho1_weighted: head-1 weights from the policy's excess loss over the reference. Shuffled
    controls are shuffled the same way as in training."""
    from wmtp.losses.alignment import valid_mask
    from wmtp.weighting.shuffle import shuffle_within_rows, step_generator

    mask = batch.labels != -100
    if cfg.recipe == "verifiable":
        from wmtp.model.checkpoint import load_value_model
        from wmtp.recipes.experience import critic_experience
        from wmtp.weighting.weights import advantage_weights

        vw = cfg.stage2.value_weighting
        critic = load_value_model(critic_dir).eval()
        scored = critic_experience(critic, batch, gamma=vw.gae_gamma, lam=vw.gae_lambda, reward_mode=vw.reward,
                                   version=0)
        w, _ = advantage_weights(scored.advantages, mask, vw.weight_temperature, vw.weight_clip_min,
                                 vw.weight_clip_max, vw.renormalize)
        if vw.shuffle:
            w = shuffle_within_rows(w, mask, step_generator(cfg.run.seed, 0, 0))
        return w
    if cfg.recipe == "rho1_weighted":
        from wmtp.losses.mtp import mtp_token_losses
        from wmtp.model.checkpoint import load_model
        from wmtp.recipes.experience import reference_token_losses
        from wmtp.weighting.rho1 import rho1_weights

        r = cfg.rho1
        reference = load_model(r.reference).eval()
        ref_losses = reference_token_losses(reference, batch, cfg.train.loss_chunk_size)
        out = policy(batch.tokens)
        losses = mtp_token_losses(out.hidden, policy.output.weight, batch.labels, cfg.train.loss_chunk_size)
        H = losses.shape[-1]
        W, _ = rho1_weights(losses, ref_losses, batch.labels, mode=r.mode, ratio=r.ratio,
                            keep_first_head=r.keep_first_head, temperature=r.temperature,
                            clip_min=r.clip_min, clip_max=r.clip_max)
        if r.shuffle:
            W = shuffle_within_rows(W, valid_mask(batch.labels, H), step_generator(cfg.run.seed, 0, 0))
        w = torch.zeros(mask.shape, dtype=W.dtype)
        w[:, 1:] = W[:, :-1, 0]  # head 1 at position t predicts token t+1
        return torch.where(mask, w, torch.zeros_like(w))
    return None


def decisive_measures(cfg: Any, policy: Any, tokenizer: Any, critic_dir: str | Path | None, n_records: int
                      ) -> dict[str, float]:
    """`decisive/{mass_share,token_share,lift,auc}` of the method's weights on the first
    `n_records` incorrect validation solutions that carry a `decisive_span` ({} for uniform
    methods and for data without the annotation)."""
    if cfg.recipe not in ("verifiable", "rho1_weighted"):
        return {}
    from wmtp.data.collator import Collator
    from wmtp.data.records import iter_lines_decoded

    valid = cfg.data.valid
    if valid is None:
        from wmtp.data.bundled import ensure_bundled

        valid = ensure_bundled(n_problems=cfg.data.synth_problems, seed=cfg.data.synth_seed).valid
    records = [rec for *_, rec in iter_lines_decoded(valid) if not rec.is_correct and rec.decisive_span]
    if not records:  # data without the annotation (real code data; a bundled task made before it existed)
        import warnings

        warnings.warn(f"{valid}: no incorrect solution carries a decisive_span: no decisive-token measures "
                      "(a bundled task made before the annotation existed is regenerated after deleting its folder)",
                      stacklevel=2)
        return {}
    records = records[:n_records]
    batch = Collator(tokenizer, cfg.data.max_seq_len)(records)
    w = method_token_weights(cfg, batch, policy, critic_dir)
    decisive = decisive_token_mask(tokenizer, batch.tokens, batch.response_start, batch.response_end,
                                   [r.decisive_span for r in records])
    share = weight_share(w, decisive, batch.labels != -100)
    return {f"decisive/{k}": v for k, v in share.items()}


def measure_run(cfg: Any, method: str, final_metrics: Mapping[str, float], plan: EvalPlan,
                critic_dir: str | Path | None = None) -> RunMeasures:
    """Every measure of one finished run (its export in `<run_dir>/export`, its log in
    `<run_dir>/metrics.jsonl`)."""
    from wmtp.config.paths import export_dir, run_dir
    from wmtp.model.checkpoint import load_model
    from wmtp.model.tokenizer import Tokenizer

    export = export_dir(cfg)
    policy = load_model(export).eval()
    tokenizer = Tokenizer(export / "tokenizer.model")
    torch.manual_seed(cfg.run.seed)
    scalars = {k: float(v) for k, v in final_metrics.items()
               if isinstance(v, int | float) and (k.startswith("val/") or k == "perf/tokens_per_s"
                                                  or k == "perf/targets_seen")}
    scalars.update(decisive_measures(cfg, policy, tokenizer, critic_dir, plan.decisive_records))
    per_task = pass_at_k_per_task(policy, tokenizer, eval_tasks(cfg, plan), plan, cfg.run.seed)
    curves = read_curves(run_dir(cfg) / "metrics.jsonl", ["val/ce", "eval/pass_at_1", "perf/tokens_per_s"])
    speed = curves.pop("perf/tokens_per_s")
    if speed and "perf/tokens_per_s" not in scalars:  # the in-process result holds no perf/ metrics
        scalars["perf/tokens_per_s"] = speed[-1][1]
    for key, level, mode in plan.thresholds:
        reached = time_to_threshold(curves.get(key, []), level, mode)
        scalars[f"tokens_to/{key}{'<=' if mode == 'min' else '>='}{level:g}"] = (
            float("nan") if reached is None else reached)
    return RunMeasures(method, cfg.run.seed, scalars, per_task, curves)


__all__ = ["EvalPlan", "RunMeasures", "aggregate", "decisive_measures", "eval_tasks", "measure_run",
           "method_token_weights", "pass_at_k_per_task", "bootstrap_ci", "char_offsets", "decisive_token_mask", "family_of",
           "format_table", "plot_curves", "rank_auc", "read_curves", "time_to_threshold", "weight_share"]

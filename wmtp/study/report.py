"""docs/RESULTS.md from a finished `wmtp study`: the pre-stated claims answered, one headline table
of paired differences with their CIs, the weights' diagnostics beside them, the stages and their
gates, a plot, and what the numbers do and do not show. Every sentence is generated from the
numbers on disk, so `wmtp study --spec ... --report-only` rewrites the file byte for byte.

A claim "holds" when the paired 95% CI of its arm against every arm it names lies on the good side
of 0 (pass@1 higher, CE lower); it is "contradicted" when one lies on the bad side; otherwise it is
"not supported": no difference this design can tell from 0 (its minimum detectable difference is
stated beside it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from wmtp.study.measures import RunMeasures, family_of
from wmtp.study.paired import PairedComparison, compare

SCALE = {"pass@1": 100.0, "ce_head1": 1.0}  # pass@1 differences in percentage points
UNIT = {"pass@1": " pp", "ce_head1": ""}
LOWER_IS_BETTER = {"ce_head1"}


def arm_items(runs: list[RunMeasures], arm: str, measure: str) -> dict[int, dict[str, float]]:
    """`{seed: {item: value}}` of one arm's runs."""
    return {r.seed: r.items.get(measure, {}) for r in runs if r.arm == arm}


def paired(report: Any, a: str, b: str, measure: str) -> PairedComparison:
    return compare(arm_items(report.runs, a, measure), arm_items(report.runs, b, measure),
                   n_bootstrap=report.plan.spec.bootstrap)


def comparisons(report: Any) -> list[tuple[str, str, str]]:
    """(setting, arm, reference): every arm against its setting's first arm, then the claims' pairs."""
    spec = report.plan.spec
    pairs: list[tuple[str, str, str]] = []
    for setting in spec.settings:
        arms = [a for a, x in spec.arms.items() if x.setting == setting]
        pairs += [(setting, a, arms[0]) for a in arms[1:]]
    for c in spec.claims:
        for b in c.against:
            if (spec.arms[c.arm].setting, c.arm, b) not in pairs:
                pairs.append((spec.arms[c.arm].setting, c.arm, b))
    return pairs


def verdict(report: Any, claim: Any) -> tuple[str, list[str]]:
    """("holds" | "contradicted" | "not supported", one phrase per comparison)."""
    sign = -1.0 if claim.measure in LOWER_IS_BETTER else 1.0
    phrases, good, bad = [], 0, 0
    for b in claim.against:
        c = paired(report, claim.arm, b, claim.measure)
        s = SCALE[claim.measure]
        phrases.append(f"vs `{b}` {c.mean * s:+.2f}{UNIT[claim.measure]} [{c.ci_low * s:+.2f}, {c.ci_high * s:+.2f}]"
                       f" (MDD {c.mdd * s:.2f})")
        if math.isfinite(c.ci_low) and sign * c.ci_low > 0 and sign * c.ci_high > 0:
            good += 1
        elif math.isfinite(c.ci_low) and sign * c.ci_low < 0 and sign * c.ci_high < 0:
            bad += 1
    if bad:
        return "contradicted", phrases
    return ("holds" if good == len(claim.against) else "not supported"), phrases


def critic_gated(report: Any) -> bool | None:
    stage = report.stages.get("critic")
    return None if stage is None else bool(stage.get("gate_passed"))


def arm_label(report: Any, arm: str) -> str:
    a = report.plan.spec.arms[arm]
    ungated = a.recipe == "verifiable" and critic_gated(report) is False and \
        report.plan.configs[arm].stage2.value_weighting.source == "critic"
    return f"`{arm}`" + (" (ungated critic)" if ungated else "")


def headline_lines(report: Any) -> list[str]:
    """The answer to each claim, one line each (also the console's summary)."""
    spec = report.plan.spec
    if report.stopped:
        ntp = report.stages["ntp"]
        return [f"No answer: the budget is too small. The NTP stage reached greedy pass@1 {ntp['pass@1']:.3f} after "
                f"{ntp['steps']} steps, below the gate {spec.stages.ntp.min_pass_at_1:g}: pass@1 of the arms could "
                "not tell them apart. Raise train.steps (the same for every arm) and rerun."]
    out = []
    for c in spec.claims:
        v, phrases = verdict(report, c)
        out.append(f"**{c.statement}** ({c.measure}): **{v}**: {arm_label(report, c.arm)} " + "; ".join(phrases) + ".")
    return out


def _fmt(x: float, digits: int = 3) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def headline_table(report: Any) -> list[str]:
    lines = ["| setting | comparison | Δ pass@1, pp [95% CI] | t interval | sign-flip p | MDD, pp | Δ CE head 1 [95% CI] | seeds × tasks |",
             "|---|---|---|---|---|---|---|---|"]
    for setting, a, b in comparisons(report):
        p, ce = paired(report, a, b, "pass@1"), paired(report, a, b, "ce_head1")
        lines.append(f"| {setting} | {arm_label(report, a)} − `{b}` | {p.mean * 100:+.2f} [{p.ci_low * 100:+.2f}, {p.ci_high * 100:+.2f}]"
                     f" | [{p.t_low * 100:+.2f}, {p.t_high * 100:+.2f}] | {p.p_sign_flip:.3f} | {p.mdd * 100:.2f}"
                     f" | {ce.mean:+.4f} [{ce.ci_low:+.4f}, {ce.ci_high:+.4f}] | {p.n_seeds} × {p.n_tasks} |")
    return lines


def mean_scalar(runs: list[RunMeasures], arm: str, key: str) -> float:
    vals = [r.scalars.get(key, float("nan")) for r in runs if r.arm == arm]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def weights_table(report: Any) -> list[str]:
    lines = ["| arm | ESS | Spearman(w, position) | mean w, quarters 1 → 4 | clipped | AUC at decisive tokens: incorrect (↓ good) | correct variant (↑ good) |",
             "|---|---|---|---|---|---|---|"]
    for arm in report.plan.spec.arms:
        m = {k: mean_scalar(report.runs, arm, k) for k in ("weights/ess", "weights/position_spearman", "weights/frac_clipped",
                                                           "decisive/weights_auc_incorrect", "decisive/weights_auc_variant")}
        quarters = " / ".join(_fmt(mean_scalar(report.runs, arm, f"weights/quarter_{q}"), 2) for q in range(1, 5))
        lines.append(f"| `{arm}` | {_fmt(m['weights/ess'])} | {_fmt(m['weights/position_spearman'])} | {quarters} | "
                     f"{_fmt(m['weights/frac_clipped'])} | {_fmt(m['decisive/weights_auc_incorrect'])} | "
                     f"{_fmt(m['decisive/weights_auc_variant'])} |")
    return lines


def arms_table(report: Any) -> list[str]:
    spec = report.plan.spec
    lines = ["| arm | setting | recipe | pass@1 per seed | CE head 1 | CE head 2 | CE head 1 by quarter | trained targets | minutes (train + measure) | what it is |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, a in spec.arms.items():
        mine = sorted((r for r in report.runs if r.arm == arm), key=lambda r: r.seed)
        per_seed = ", ".join(f"{r.scalars.get('pass@1', float('nan')):.3f}" for r in mine) or "—"
        targets = sorted({int(r.scalars.get("trained_targets", 0)) for r in mine})
        quarters = " / ".join(_fmt(mean_scalar(report.runs, arm, f"ce_head1/q{q}"), 2) for q in range(1, 5))
        minutes = mean_scalar(report.runs, arm, "train_minutes"), mean_scalar(report.runs, arm, "measure_minutes")
        lines.append(f"| `{arm}` | {a.setting} | {a.recipe} | {per_seed} | {_fmt(mean_scalar(report.runs, arm, 'ce_head1'))} | "
                     f"{_fmt(mean_scalar(report.runs, arm, 'ce_head2'))} | {quarters} | "
                     f"{', '.join(f'{t:,}' for t in targets) or '—'} | {_fmt(minutes[0], 1)} + {_fmt(minutes[1], 1)} | "
                     f"{a.description} |")
    return lines


def equal_targets_lines(report: Any) -> list[str]:
    """Whether each setting's arms trained on the same number of targets, seed by seed (counted)."""
    spec, out = report.plan.spec, []
    for setting in spec.settings:
        arms = [a for a, x in spec.arms.items() if x.setting == setting]
        by_seed: dict[int, set[int]] = {}
        for r in report.runs:
            if r.arm in arms:
                by_seed.setdefault(r.seed, set()).add(int(r.scalars.get("trained_targets", 0)))
        unequal = {s: sorted(v) for s, v in by_seed.items() if len(v) > 1}
        out.append(f"- `{setting}`: " + ("every arm trained on the same targets, seed by seed (counted by replaying "
                                         "each run's batches)" if not unequal else f"UNEQUAL trained targets: {unequal}"))
    return out


def stage_lines(report: Any) -> list[str]:
    spec, out = report.plan.spec, []
    ntp = report.stages.get("ntp")
    if ntp:
        out.append(f"- **NTP** ({ntp['steps']} steps, correct solutions; the budget's calibration and the Rho-1 "
                   f"reference): greedy pass@1 {ntp['pass@1']:.3f} on {ntp['tasks']} test tasks; gate ≥ "
                   f"{spec.stages.ntp.min_pass_at_1:g}: {'passed' if ntp['gate_passed'] else 'FAILED'}.")
    critic = report.stages.get("critic")
    if critic:
        c = spec.stages.critic
        out.append(f"- **Critic** ({critic['steps']} steps from the NTP export's trunk): final-value AUC "
                   f"{critic['final_value_auc']:.3f} on {int(critic['solutions'])} validation solutions (gate ≥ "
                   f"{c.min_final_value_auc:g}), decisive TD-error AUC {_fmt(critic['decisive_td_auc'])} on "
                   f"{int(critic['decisive_solutions'])} incorrect solutions (gate ≤ {c.max_decisive_td_auc:g}; 0.5 = "
                   f"blind): {'passed' if critic['gate_passed'] else 'FAILED (' + '; '.join(critic['gate_failed']) + ')'}.")
    return out


def family_lines(report: Any) -> list[str]:
    """pass@1 per family and arm, only for families neither at 0 nor at 100% over all runs."""
    fams: dict[str, dict[str, list[float]]] = {}
    for r in report.runs:
        for task, v in r.items.get("pass@1", {}).items():
            fams.setdefault(family_of(task), {}).setdefault(r.arm, []).append(v)
    arms = list(report.plan.spec.arms)
    keep = sorted(f for f, by in fams.items() if 0 < np.mean([v for vs in by.values() for v in vs]) < 1)
    if not keep:
        return ["Every family is at 0 or at 100% in every run: no per-family table."]
    lines = ["| family | " + " | ".join(f"`{a}`" for a in arms) + " |", "|---|" + "---|" * len(arms)]
    for f in keep:
        lines.append(f"| {f} | " + " | ".join(_fmt(float(np.mean(fams[f][a])), 2) if a in fams[f] else "—" for a in arms) + " |")
    return lines


def reading_lines(report: Any) -> list[str]:
    """What the table shows and what it does not, from the numbers."""
    spec = report.plan.spec
    n = len(spec.seeds)
    out = [f"- Each difference is paired: the same seeds (initialisation and batch order) and the same test tasks or "
           f"validation solutions for both arms. The CI is a hierarchical bootstrap (seeds, then items within a seed); "
           f"with {n} seeds the exact sign-flip test cannot go below p = {2 / 2 ** n:.3f}, so it cannot reject at 5% "
           f"whatever the effect; the t interval over per-seed means is printed beside the bootstrap.",
           "- Within a setting the arms train on the same batches: a weighted arm differs from the uniform one in its "
           "weights alone (on the same batches the verifiable recipe with uniform weights trains the baseline's model to "
           "the bit: tests/recipes/test_weight_controls.py), and the trained targets are counted equal below."]
    gated = critic_gated(report)
    if gated is False:
        out.append("- The critic failed its gate: the critic arms are reported as ungated. Their weights test a critic "
                   "that does not yet know correct from incorrect well; a \"no\" for them is about this critic, "
                   "not about critic weighting in general.")
    for setting, a, b in comparisons(report):
        if a == b or spec.arms[b].setting != setting or list(x for x, y in spec.arms.items() if y.setting == setting)[0] != b:
            continue
        c = paired(report, a, b, "pass@1")
        if not math.isfinite(c.ci_low):
            continue
        side = ("above" if c.ci_low > 0 else "below" if c.ci_high < 0 else "across")
        ess = mean_scalar(report.runs, a, "weights/ess")
        out.append(f"- {setting}: `{a}` − `{b}` = {c.mean * 100:+.1f} pp, 95% CI {side} 0 over {c.n_seeds} seed(s)"
                   + (f"; its weights' ESS is {ess:.2f} (1 = uniform: the weights concentrate the gradient on "
                      f"about {ess:.0%} of the targets' worth)" if math.isfinite(ess) else "") + ".")
    for arm in spec.arms:
        rho = mean_scalar(report.runs, arm, "weights/position_spearman")
        control = report.plan.configs[arm].stage2.value_weighting.source == "position" if spec.arms[arm].recipe == \
            "verifiable" else False
        if math.isfinite(rho) and abs(rho) >= 0.5 and not control:
            out.append(f"- `{arm}`'s weights follow position (Spearman {rho:+.2f} with relative position): compare it "
                       "with the position-only control before crediting its critic.")
    out += critic_reading(report)
    out.append("- pass@1 is greedy on the held-out test problems after the arms' common step budget; a longer budget or "
               "a larger model may order the arms differently. The CE columns are unweighted CE of each head on every "
               "correct validation solution: the uniform arms' own objective, a secondary measure.")
    return out


def critic_reading(report: Any) -> list[str]:
    """Where the critic's knowledge goes, from the numbers: whether the trained weights keep what
    the critic's TD error sees at the bug, and whether their placement beats the same weights
    shuffled."""
    spec, stage, out = report.plan.spec, report.stages.get("critic"), []
    for setting, a, b in comparisons(report):
        cfg = report.plan.configs[a]
        vw = cfg.stage2.value_weighting
        if spec.arms[a].recipe != "verifiable" or vw.source != "critic" or vw.shuffle:
            continue
        if b == next(x for x, y in spec.arms.items() if y.setting == setting) and stage is not None:
            td, w = float(stage.get("decisive_td_auc", float("nan"))), mean_scalar(report.runs, a, "decisive/weights_auc_incorrect")
            if td <= spec.stages.critic.max_decisive_td_auc and abs(w - 0.5) < 0.05:
                out.append(f"- {setting}: the critic's TD error sees the bug (decisive AUC {td:.3f}) but the weights `{a}` "
                           f"trained with do not ({w:.3f}; 0.5 = blind): GAE with λ = {vw.gae_lambda:g} sums δ over the "
                           "tokens after each one, so the drop at the bug spreads over the tokens before it. An arm "
                           "weighted by δ itself (λ = 0) is the control that would tell whether the critic's knowledge "
                           "helps once it reaches the weights.")
        c = paired(report, a, b, "pass@1")
        shuffled = next((x for x in spec.arms if x == b and report.plan.configs[x].stage2.value_weighting.shuffle), None)
        if shuffled and math.isfinite(c.ci_low) and c.ci_low <= 0 <= c.ci_high:
            out.append(f"- {setting}: `{a}` − `{b}` = {c.mean * 100:+.1f} pp, CI across 0: where the critic puts its "
                       "weight adds nothing measurable over the same weights at random places of each response.")
    return out


def plot(report: Any, path: Path) -> Path:
    """Validation CE (head 1) against trained targets, mean over seeds per arm; pass@1 per arm and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    arms = list(report.plan.spec.arms)
    for arm in arms:
        curves = [r.curves.get("val/ce", []) for r in report.runs if r.arm == arm]
        curves = [c for c in curves if c]
        if curves:
            n = min(len(c) for c in curves)
            ax1.plot([np.mean([c[i][0] for c in curves]) for i in range(n)],
                     [np.mean([c[i][1] for c in curves]) for i in range(n)], marker="o", ms=3, label=arm)
    ax1.set_xlabel("trained targets")
    ax1.set_ylabel("validation CE (logged batches)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    for i, arm in enumerate(arms):
        vals = [r.scalars.get("pass@1", float("nan")) for r in report.runs if r.arm == arm]
        ax2.scatter([i] * len(vals), vals, s=25)
        if vals:
            ax2.hlines(np.nanmean(vals), i - 0.3, i + 0.3)
    ax2.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("greedy pass@1 (each seed; bar = mean)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def write_results(report: Any, path: str | Path, *, command: str) -> Path:
    """Write the report (and `results_<study>.png` beside it); byte-identical for the same measures."""
    spec = report.plan.spec
    out = Path(path)
    rec = report.record or {}
    lines = [f"# Does weighting help? Study `{spec.name}`", "",
             f"Produced by `{rec.get('command') or command}`; rewrite this file from the measured runs with "
             f"`wmtp study --spec <spec> --report-only`.",
             f"Machine: {rec.get('machine', 'unknown')}. The last launch that ended took {_fmt(rec.get('wall_s', float('nan')) / 60, 1)} min "
             f"(finished {rec.get('finished', '?')}, load average at the end {', '.join(f'{x:.1f}' for x in rec.get('loadavg', []))}; "
             f"{rec.get('runs_measured', '?')} run(s) trained and measured by that launch, {rec.get('runs_reused', '?')} reused)."]
    if report.missing:
        total = len(spec.arms) * len(spec.seeds)
        lines.append(f"**Partial: {total - len(report.missing)} of {total} runs measured when this file was written** "
                     "(the study was still running or was stopped; rerunning the command resumes it and rewrites "
                     "this file). Each comparison below uses the seeds both of its arms have.")
    lines += ["", "## Answer", ""]
    lines += [f"- {x}" for x in headline_lines(report)]
    if report.missing:
        lines += ["", "Missing runs (not measured, left out of every figure): " + ", ".join(report.missing) + "."]
    lines += ["", "## Stages", "", *stage_lines(report)]
    if not report.stopped:
        png = plot(report, out.parent / f"results_{spec.name}.png")
        lines += ["", "## Paired differences (arm − reference)", "", *headline_table(report), "",
                  "## The weights the arms trained with", "",
                  "Means over each run's logged steps (ESS: effective sample size / targets, 1 = uniform; Spearman with "
                  "the target's relative position in its response; clipped fraction). AUC at decisive tokens: within each "
                  "solution, how the run's weights rank the tokens where an incorrect solution differs from its closest "
                  "correct variant (0.5 = no preference, exact under permutation).", "", *weights_table(report), "",
                  "## Arms", "", *arms_table(report), "", *equal_targets_lines(report), "",
                  f"![validation CE against trained targets, and pass@1 per seed]({png.name})", "",
                  "## What this shows and what it does not", "", *reading_lines(report), "",
                  "## pass@1 by family", "", *family_lines(report)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


__all__ = ["comparisons", "headline_lines", "paired", "verdict", "write_results"]

"""`wmtp study`: does weighting help? Shared stages with gates, then arms × seeds as one Ray Tune
grid, measured per item so every comparison is paired (docs/RESULTS.md).

    run_study(spec) -> StudyReport

1. Every (arm, seed) config is resolved and checked up front (one step budget for all arms).
2. Stage `ntp` (next-token prediction on correct solutions, the arms' step count) runs once and is
   measured: greedy pass@1 on the test tasks. Below `stages.ntp.min_pass_at_1` the budget is too
   small for pass@1 to say anything: the study says so and stops. Its export is the Rho-1 arms'
   reference (a model trained on correct solutions only, as in the published method).
3. Stage `critic` (the critic recipe started from the NTP export's trunk) runs once when an arm
   needs it and is measured on every validation solution (final-value AUC, within-solution
   TD-error AUC at decisive tokens) against its gate. A critic that fails the gate still scores
   the critic arms; the report calls them "ungated" and names the figures that failed.
4. The arms × seeds run as one grid (`wmtp.orchestration.grid`: a Ray Tune experiment, FIFO,
   `max_concurrent_trials` trials at once, one CPU each, one MLflow parent run with each run nested
   under it). Each trial (`study_trial`) trains its run in its own process, measures it
   (`wmtp.study.measures.measure_run`) and writes `<run_dir>/study_measures.json`.
5. Resumable: rerunning the command reuses the stages' exports and measures and every measured
   run, restores the Tune experiment, and resumes an interrupted run from its checkpoint.
"""
# One module (over 300 lines): a study's stages, gates, grid and resume are one experiment.

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wmtp.config.paths import export_dir, run_dir
from wmtp.config.schema import WMTPConfig
from wmtp.study.measures import EvalPlan, RunMeasures
from wmtp.study.spec import StudySpec, arm_config, check_budgets, stage_config

MEASURES_FILE = "study_measures.json"
STAGE_FILE = "stage_measures.json"


def eval_plan(spec: StudySpec) -> EvalPlan:
    e = spec.evaluation
    return EvalPlan(e.benchmark, e.path, e.max_new_tokens, e.batch_size, e.max_tasks, e.max_valid_solutions,
                    e.decisive_records)


@dataclass
class StudyPlan:
    spec: StudySpec
    configs: dict[str, WMTPConfig]  # arm → config of its first seed
    stages: dict[str, WMTPConfig]  # "ntp", and "critic" when a verifiable arm needs it
    budget: int

    def format(self) -> str:
        s = self.spec
        first = next(iter(self.configs.values()))
        lines = [f"study {s.name}: {len(self.configs)} arms × {len(s.seeds)} seeds = "
                 f"{len(self.configs) * len(s.seeds)} runs, {s.max_concurrent_trials} at once",
                 f"budget per run: {first.train.steps} steps × {first.data.batch_size} sequences × "
                 f"max_seq_len {first.data.max_seq_len} ({self.budget:,} token slots; trained targets are counted)",
                 f"model: {first.model.preset}, {first.model.n_future_tokens or 'preset'} heads; output: {first.run.output_dir}"]
        ntp = s.stages.ntp
        lines.append(f"stage ntp: {self.stages['ntp'].train.steps} steps, gate greedy pass@1 >= {ntp.min_pass_at_1:g} "
                     "(calibration; the Rho-1 reference)")
        if "critic" in self.stages:
            c = s.stages.critic
            lines.append(f"stage critic: {self.stages['critic'].train.steps} steps from the NTP export, gate final-value "
                         f"AUC >= {c.min_final_value_auc:g} and decisive TD-error AUC <= {c.max_decisive_td_auc:g}")
        for setting, st in s.settings.items():
            lines.append(f"setting {setting}: {', '.join(f'{k}={v}' for k, v in st.overrides.items()) or 'base'}")
            for arm, a in s.arms.items():
                if a.setting == setting:
                    knobs = ", ".join(f"{k}={v}" for k, v in a.overrides.items()) or "recipe defaults"
                    lines.append(f"  {arm:<18} {a.recipe:<14} {knobs}")
        for c in s.claims:
            lines.append(f"claim {c.name}: {c.statement} ({c.arm} beats {', '.join(c.against)} on {c.measure})")
        return "\n".join(lines)


def plan_study(spec: StudySpec, output_dir: str | None = None) -> StudyPlan:
    """Resolve and check every run's config (all seeds) and the stages; nothing runs."""
    configs = {a: arm_config(spec, a, spec.seeds[0], output_dir) for a in spec.arms}
    for a in spec.arms:
        for seed in spec.seeds[1:]:
            arm_config(spec, a, seed, output_dir)
    budget = check_budgets(spec, configs)
    stages = {"ntp": stage_config(spec, "ntp", output_dir)}
    if any(c.recipe == "verifiable" for c in configs.values()):
        stages["critic"] = stage_config(spec, "critic", output_dir)
    return StudyPlan(spec, configs, stages, budget)


@dataclass
class StudyReport:
    plan: StudyPlan
    runs: list[RunMeasures]
    stages: dict[str, dict[str, Any]]  # stage → its measures, with "gate_passed" and "gate_failed" phrases
    wall_s: float
    missing: list[str] = field(default_factory=list)
    record: dict[str, Any] | None = None  # the grid-running invocation's own record (record_path)

    @property
    def stopped(self) -> bool:
        """The NTP stage failed its gate: the budget is too small and no arm ran."""
        return not self.stages.get("ntp", {}).get("gate_passed", True)

    def format(self) -> str:
        from wmtp.study.report import headline_lines

        out = headline_lines(self)
        if self.missing:
            out.append("missing runs: " + ", ".join(self.missing))
        if self.wall_s == self.wall_s:
            out.append(f"wall time {self.wall_s / 60:.1f} min")
        return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Stages


def measure_ntp(cfg: WMTPConfig, plan: EvalPlan) -> dict[str, Any]:
    """Greedy pass@1 of the NTP export on the test tasks."""
    import numpy as np

    from wmtp.checkpoint import load_model
    from wmtp.model.tokenizer import Tokenizer
    from wmtp.study.measures import greedy_pass_at_1, test_tasks

    export = export_dir(cfg)
    passed = greedy_pass_at_1(load_model(export).eval(), Tokenizer(export / "tokenizer.model"), test_tasks(cfg, plan),
                              plan, cfg.run.seed)
    return {"pass@1": float(np.mean(list(passed.values()))), "tasks": len(passed)}


def measure_critic_stage(cfg: WMTPConfig, plan: EvalPlan) -> dict[str, Any]:
    """The critic export's quality on every validation solution (`evaluation.critic_quality`; the
    first `max_valid_solutions` if set)."""
    from wmtp.checkpoint import load_value_model
    from wmtp.data import streams
    from wmtp.evaluation.critic_quality import measure_critic
    from wmtp.parallel.reduce import process_layout

    vw = cfg.stage2.value_weighting
    data = streams.load_data(cfg)
    q = measure_critic(load_value_model(export_dir(cfg)).eval(), data.valid, data.tokenizer, gamma=vw.gae_gamma,
                       reward_mode=vw.reward, batch_size=plan.batch_size, layout=process_layout(False),
                       max_solutions=plan.max_valid_solutions)
    return {k.split("/", 1)[1]: v for k, v in q.items()}


def gate(spec: StudySpec, stage: str, m: dict[str, Any]) -> list[str]:
    """The stage's gate figures that fail, as phrases ([] = passed)."""
    if stage == "ntp":
        g = spec.stages.ntp
        return [] if m["pass@1"] >= g.min_pass_at_1 else [f"greedy pass@1 {m['pass@1']:.3f} < {g.min_pass_at_1:g}"]
    from wmtp.evaluation.critic_quality import near_chance

    c = spec.stages.critic
    return near_chance({f"critic_quality/{k}": v for k, v in m.items()}, c.min_final_value_auc, c.max_decisive_td_auc)


def run_stage(spec: StudySpec, name: str, cfg: WMTPConfig, plan: EvalPlan, log: Callable[[str], None]
              ) -> tuple[dict[str, Any], bool]:
    """Train (unless exported) and measure (unless measured) one stage; (measures with the gate's
    verdict, whether it trained now)."""
    from wmtp.orchestration.launch import run_training

    path = run_dir(cfg) / STAGE_FILE
    if path.is_file():
        log(f"[wmtp] study {spec.name}: reusing stage {name} {export_dir(cfg)}")
        return json.loads(path.read_text()), False
    trained = not (export_dir(cfg) / "params.json").exists()
    if trained:
        log(f"[wmtp] study {spec.name}: running stage {name} (run {cfg.run.name}, {cfg.train.steps} steps)")
        t0 = time.perf_counter()
        run_training(cfg) if cfg.orchestration.enabled else run_in_process(cfg)
        minutes = (time.perf_counter() - t0) / 60
    m = measure_ntp(cfg, plan) if name == "ntp" else measure_critic_stage(cfg, plan)
    failed = gate(spec, name, m)
    m.update({"gate_passed": not failed, "gate_failed": failed, "steps": cfg.train.steps})
    if trained:
        m["train_minutes"] = round(minutes, 1)
    log(f"[wmtp] study {spec.name}: stage {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()
                                                                if isinstance(v, float)) +
        ("; gate passed" if not failed else "; gate FAILED: " + "; ".join(failed)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(m, indent=1, sort_keys=True))
    return m, trained


# ---------------------------------------------------------------------------------------------
# The grid


def study_trial(arm: str, seed: int, parent_run_id: str | None, *, configs: dict[str, dict],
                plan: EvalPlan) -> dict[str, float]:
    """One (arm, seed) run, in its grid trial's process: train (resumable), then measure; a run
    measured before is read back, not retrained."""
    from wmtp.config.update import update_config
    from wmtp.study.measures import measure_run

    cfg = update_config(WMTPConfig.model_validate(configs[arm]),
                        {"run.seed": seed, "run.name": configs[arm]["run"]["name"].rsplit("-s", 1)[0] + f"-s{seed}"},
                        "study seed")
    done = run_dir(cfg) / MEASURES_FILE
    if done.is_file():
        measures = RunMeasures.from_json(json.loads(done.read_text()))
    else:
        t0 = time.perf_counter()
        run_in_process(cfg, parent_run_id)
        train_s = time.perf_counter() - t0
        measures = measure_run(cfg, arm, plan, cfg.value_model.checkpoint if cfg.recipe == "verifiable" else None)
        measures.scalars.update({"train_minutes": train_s / 60, "measure_minutes": (time.perf_counter() - t0 - train_s) / 60})
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(measures.to_json()))
        tmp.replace(done)
    return {"study/pass@1": measures.scalars.get("pass@1", float("nan")), "study/done": 1.0}


def run_in_process(cfg: WMTPConfig, parent_run_id: str | None = None) -> dict[str, float]:
    """`wmtp train --local` of `cfg` (local checkpoints, resumable), MLflow nested under the parent."""
    from wmtp.recipes import run_recipe
    from wmtp.tracking.registry import build_run_logger, end_dead_attempt

    return run_recipe(cfg, make_logger=lambda c: build_run_logger(c, is_main=True, parent_run_id=parent_run_id),
                      end_dead_attempt=end_dead_attempt)


def record_path(plan: StudyPlan) -> Path:
    """`<output_dir>/study-<name>.json`: what the invocation that ran the grid measured about itself
    (wall time, load, runs trained vs reused), so `--report-only` can restate it."""
    return Path(plan.stages["ntp"].run.output_dir) / f"study-{plan.spec.name}.json"


def read_record(plan: StudyPlan) -> dict[str, Any] | None:
    try:
        return json.loads(record_path(plan).read_text())
    except (OSError, ValueError):
        return None


def run_study(spec: StudySpec, *, output_dir: str | None = None, results: str | None = "spec",
              command: str = "", log: Callable[[str], None] = print) -> StudyReport:
    """Run (or resume) the study; returns the report (written to `results`, default the spec's)."""
    from functools import partial

    from wmtp.orchestration.grid import Grid, run_grid
    from wmtp.orchestration.launch import with_absolute_paths

    t0 = time.perf_counter()
    plan = plan_study(spec, output_dir)
    log(plan.format())
    ev = eval_plan(spec)
    measured_before = len(collect(plan)[0])
    stages, trained = {}, []
    for name, cfg in plan.stages.items():
        stages[name], now = run_stage(spec, name, with_absolute_paths(cfg), ev, log)
        trained += [name] if now else []
        if name == "ntp" and not stages[name]["gate_passed"]:
            log(f"[wmtp] study {spec.name}: the NTP stage missed its gate; no arm runs (raise train.steps)")
            break
    report = StudyReport(plan, [], stages, float("nan"))
    if not report.stopped:
        configs = {a: with_absolute_paths(c) for a, c in plan.configs.items()}

        def finish(parent: Any) -> None:
            nonlocal report
            report = build_report(plan, stages)
            if parent is not None:
                parent.log_params({"study.arms": ",".join(spec.arms), "study.seeds": ",".join(map(str, spec.seeds))})
                parent.log_metrics({f"{r.arm}/s{r.seed}/pass@1": r.scalars["pass@1"] for r in report.runs}, step=0)

        grid = Grid(f"study-{spec.name}", list(spec.arms), list(spec.seeds), spec.max_concurrent_trials,
                    next(iter(configs.values())), done_before=measured_before)
        trial = partial(study_trial, configs={a: c.model_dump(mode="json") for a, c in configs.items()}, plan=ev)
        run_grid(grid, trial, log=log, finish=finish)
    report.wall_s = time.perf_counter() - t0
    report.record = {"wall_s": report.wall_s, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "loadavg": list(os.getloadavg()), "command": command, "machine": machine(),
                     "runs_measured": len(report.runs) - measured_before, "runs_reused": measured_before,
                     "stages_trained": trained, "stages_reused": [n for n in stages if n not in trained]}
    record_path(plan).parent.mkdir(parents=True, exist_ok=True)
    record_path(plan).write_text(json.dumps(report.record, indent=1))
    _write(report, spec, results, command, log)
    return report


def _write(report: StudyReport, spec: StudySpec, results: str | None, command: str, log: Callable[[str], None]) -> None:
    target = spec.results if results == "spec" else results
    if target:
        from wmtp.study.report import write_results

        write_results(report, target, command=command)
        log(f"[wmtp] study {spec.name}: wrote {target}")


def build_report(plan: StudyPlan, stages: dict[str, dict[str, Any]]) -> StudyReport:
    """The report from the measures found on disk (missing runs are listed, not guessed)."""
    runs, missing = collect(plan)
    return StudyReport(plan, runs, stages, float("nan"), missing)


def report_only(spec: StudySpec, *, output_dir: str | None = None, results: str | None = "spec",
                command: str = "") -> StudyReport:
    """The report from the stages and runs already measured on disk (nothing trains; no Ray)."""
    plan = plan_study(spec, output_dir)
    stages = {}
    for name, cfg in plan.stages.items():
        path = run_dir(cfg) / STAGE_FILE
        if path.is_file():
            stages[name] = json.loads(path.read_text())
    report = build_report(plan, stages)
    report.record = read_record(plan)
    if report.record:
        report.wall_s = float(report.record.get("wall_s", float("nan")))
    _write(report, spec, results, command, lambda s: None)
    return report


def collect(plan: StudyPlan) -> tuple[list[RunMeasures], list[str]]:
    """The measures of every (arm, seed) run found on disk; names of those without."""
    from wmtp.config.update import update_config

    runs, missing = [], []
    for cfg in plan.configs.values():
        for seed in plan.spec.seeds:
            name = str(cfg.run.name).rsplit("-s", 1)[0] + f"-s{seed}"
            path = run_dir(update_config(cfg, {"run.seed": seed, "run.name": name}, "study seed")) / MEASURES_FILE
            if path.is_file():
                runs.append(RunMeasures.from_json(json.loads(path.read_text())))
            else:
                missing.append(name)
    return runs, missing


def machine() -> str:
    import torch

    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, "
            f"python {platform.python_version()}, torch {torch.__version__}")


__all__ = ["MEASURES_FILE", "STAGE_FILE", "StudyPlan", "StudyReport", "collect", "eval_plan", "plan_study",
           "read_record", "record_path", "report_only", "run_stage", "run_study", "study_trial"]

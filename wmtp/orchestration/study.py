"""`wmtp study`: does weighting help? Methods × seeds as one Ray Tune grid, with shared stages,
held-out measures and bootstrap confidence intervals (docs/RESULTS.md).

    run_study(spec) -> StudyReport

1. Every (method, seed) config is resolved and checked up front (one token budget for all methods).
2. The producing stages a method needs (critic for verifiable, ref_tuning for rho1_weighted) run
   once, as `<study>-critic` / `<study>-ref_tuning`, and are reused by every method and seed (and
   by a rerun: an existing export is reused).
3. The grid is a Ray Tune experiment (the engine of `wmtp tune`: `grid_search` over method and
   seed, FIFO, `max_concurrent_trials` from the spec, one MLflow parent run with each run's MLflow
   run nested under it). Each trial trains one TorchTrainer run, then measures it in the trial
   process (`wmtp.evaluation.study_metrics.measure_run`) and writes `<run_dir>/study_measures.json`.
4. Resumable: rerunning the same command restores the Tune experiment; a trial whose measures
   file exists reports it without training again, and an interrupted run resumes from its own
   checkpoint (same run name).
5. The table (mean [95% CI] over seeds, and tasks within seeds for pass@k) is printed; the report,
   with a plot, goes to `spec.results`.
"""
# One module (over 300 lines): a study's grid, resume and shared stages are one Tune experiment.

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
from wmtp.config.study import (
    STAGE_FOR_RECIPE,
    StageName,
    StudySpec,
    check_budgets,
    method_config,
    stage_config,
)
from wmtp.evaluation.study_metrics import EvalPlan, RunMeasures

MEASURES_FILE = "study_measures.json"


def record_path(plan: StudyPlan) -> Path:
    """`<output_dir>/study-<name>.json`: what the invocation that ran the grid measured about itself
    (wall time, load, runs trained vs reused), so `--report-only` can restate it."""
    first = next(iter(plan.configs.values()))
    return Path(first.run.output_dir) / f"study-{plan.spec.name}.json"


def read_record(plan: StudyPlan) -> dict[str, Any] | None:
    try:
        return json.loads(record_path(plan).read_text())
    except (OSError, ValueError):
        return None


def eval_plan(spec: StudySpec) -> EvalPlan:
    e = spec.evaluation
    return EvalPlan(tuple((b.name, b.path) for b in e.benchmarks), e.tasks_per_family, e.n_samples,
                    tuple(e.ks), e.temperature, e.top_p, e.max_new_tokens, e.batch_size, e.decisive_records,
                    tuple((k, t.level, t.mode) for k, t in spec.thresholds.items()))


def _needs_stage(cfg: WMTPConfig) -> StageName | None:
    stage = STAGE_FOR_RECIPE.get(cfg.recipe)
    if stage == "critic" and cfg.value_model.checkpoint:
        return None
    if stage == "ref_tuning" and (cfg.rho1.reference or cfg.data.reference_losses):
        return None
    return stage


def _with_stage_outputs(cfg: WMTPConfig, exports: dict[str, str]) -> WMTPConfig:
    from wmtp.config.update import update_config

    stage = _needs_stage(cfg)
    if stage == "critic":
        return update_config(cfg, {"value_model.checkpoint": exports["critic"]}, "study stage outputs")
    if stage == "ref_tuning":
        return update_config(cfg, {"rho1.reference": exports["ref_tuning"]}, "study stage outputs")
    return cfg


def critic_dir_of(cfg: WMTPConfig) -> str | None:
    """The critic whose weights a verifiable run ended with (its own export with continual
    learning, else the frozen stage critic)."""
    if cfg.recipe != "verifiable":
        return None
    if cfg.stage2.value_loss.enabled:
        from wmtp.recipes.verifiable import critic_export_dir

        return str(critic_export_dir(cfg))
    return cfg.value_model.checkpoint


@dataclass
class StudyPlan:
    spec: StudySpec
    configs: dict[str, WMTPConfig]  # method → config of its first seed
    stages: dict[StageName, WMTPConfig]  # stage name → stage config (only the needed ones)
    budget: int

    def format(self) -> str:
        s = self.spec
        first = next(iter(self.configs.values()))
        lines = [f"study {s.name}: {len(self.configs)} methods × {len(s.seeds)} seeds = "
                 f"{len(self.configs) * len(s.seeds)} runs, {s.max_concurrent_trials} at once",
                 f"token budget per run: {self.budget:,} token slots ({first.train.steps} steps × "
                 f"{first.data.batch_size} × {first.data.grad_accum} accum × max_seq_len {first.data.max_seq_len})",
                 f"model: {first.model.preset}{' from ' + first.model.checkpoint if first.model.checkpoint else ''}; "
                 f"output: {first.run.output_dir}"]
        for name, cfg in self.stages.items():
            lines.append(f"stage {name}: run {cfg.run.name}, {cfg.train.steps} steps (shared)")
        for method, cfg in self.configs.items():
            m = s.methods[method]
            knobs = ", ".join(f"{k}={v}" for k, v in m.overrides.items()) or "recipe defaults"
            lines.append(f"  {method:<24} {cfg.recipe:<14} heads={cfg.model.n_future_tokens or 'preset'}  {knobs}")
        e = s.evaluation
        lines.append(f"evaluation: {', '.join(b.name + (':' + b.path if b.path else '') for b in e.benchmarks)}; "
                     f"pass@{e.ks} (n={e.n_samples}, T={e.temperature}), "
                     f"{e.tasks_per_family or 'all'} tasks per family; decisive share on {e.decisive_records} "
                     f"incorrect validation solutions")
        if s.thresholds:
            lines.append("thresholds: " + ", ".join(f"{k} {'<=' if t.mode == 'min' else '>='} {t.level:g}"
                                                    for k, t in s.thresholds.items()))
        return "\n".join(lines)


def plan_study(spec: StudySpec, output_dir: str | None = None) -> StudyPlan:
    """Resolve and check every run's config (all seeds) and the stages; nothing runs."""
    configs = {m: method_config(spec, m, spec.seeds[0], output_dir) for m in spec.methods}
    for m in spec.methods:
        for seed in spec.seeds[1:]:
            method_config(spec, m, seed, output_dir)
    budget = check_budgets(spec, configs)
    needed = sorted({st for c in configs.values() if (st := _needs_stage(c))})
    stages = {st: stage_config(spec, st, output_dir) for st in needed}
    return StudyPlan(spec, configs, stages, budget)


@dataclass
class StudyReport:
    plan: StudyPlan
    runs: list[RunMeasures]
    table: dict[str, dict[str, tuple[float, float, float, int]]]
    measures: list[str]
    family_table: dict[str, dict[str, tuple[float, float, float, int]]]
    families: list[str]
    wall_s: float
    missing: list[str] = field(default_factory=list)
    record: dict[str, Any] | None = None  # the grid-running invocation's own record (record_path)

    def format(self) -> str:
        from wmtp.evaluation.study_metrics import format_table

        out = [format_table(self.table, self.measures)]
        if self.missing:
            out.append("missing runs: " + ", ".join(self.missing))
        if self.wall_s == self.wall_s:
            out.append(f"wall time {self.wall_s / 60:.1f} min")
        return "\n".join(out)


def main_measures(runs: list[RunMeasures], spec: StudySpec) -> list[str]:
    keys = {k for r in runs for k in r.scalars}
    heads = sorted((k for k in keys if k.startswith("val/ce_head")), key=lambda k: int(k.rsplit("head", 1)[1]))
    passk = [f"pass@{k}" for k in spec.evaluation.ks]
    ttt = sorted(k for k in keys if k.startswith("tokens_to/"))
    tail = [k for k in ("perf/tokens_per_s", "val/critic_auc", "val/pairwise_accuracy",
                        "decisive/mass_share", "decisive/token_share", "decisive/auc") if k in keys]
    return [*heads, *passk, *ttt, *tail]


def study_trial(params: dict[str, Any], *, configs: dict[str, dict], plan: EvalPlan, parent_run_id: str | None,
                recipe_builder: Callable | None = None) -> None:
    """One (method, seed) run: train with one TorchTrainer (reports reach Tune), then measure."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from wmtp.config.paths import write_resolved_config
    from wmtp.config.update import update_config
    from wmtp.evaluation.study_metrics import measure_run
    from wmtp.orchestration.launch import build_trainer

    method, seed = params["method"], int(params["seed"])
    cfg = WMTPConfig.model_validate(configs[method])
    cfg = update_config(cfg, {"run.seed": seed, "run.name": cfg.run.name.rsplit("-s", 1)[0] + f"-s{seed}"},  # type: ignore[union-attr]  # a study run has a name
                        "study seed")
    done = run_dir(cfg) / MEASURES_FILE
    if done.is_file():
        measures = RunMeasures.from_json(json.loads(done.read_text()))
    else:
        if cfg.orchestration.enabled:  # one TorchTrainer per run (clusters); its reports reach Tune
            write_resolved_config(cfg)
            result = build_trainer(cfg, recipe_builder=recipe_builder, callbacks=[TuneReportCallback()],
                                   parent_run_id=parent_run_id).fit()
            final = dict(result.metrics or {})
        else:  # the recipe in this trial's process (micro studies: no worker-group start-up per run)
            final = run_in_process(cfg, parent_run_id)
        measures = measure_run(cfg, method, final, plan, critic_dir_of(cfg))
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(measures.to_json()))
        tmp.replace(done)
    tune.report({f"study/{k}": v for k, v in measures.scalars.items()} | {"study/done": 1.0})


def study_progress(name: str, total: int, log: Callable[[str], None]):
    """A Tune callback printing one line per finished (method, seed) run: done/total, elapsed, ETA."""
    from ray import tune

    from wmtp.evaluation.progress import format_eta

    class StudyProgress(tune.Callback):
        def setup(self, **info: Any) -> None:
            self.t0, self.done = time.monotonic(), 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            elapsed = time.monotonic() - self.t0
            eta = format_eta(elapsed / self.done * (total - self.done)) if self.done < total else "0s"
            params = trial.config or {}
            log(f"[wmtp] study {name}: run {self.done}/{total} done ({params.get('method')} "
                f"s{params.get('seed')}), elapsed {format_eta(elapsed)}, ETA {eta}")

    return StudyProgress()


def run_in_process(cfg: WMTPConfig, parent_run_id: str | None = None) -> dict[str, float]:
    """`wmtp train --local` of `cfg` (local checkpoints, resumable), MLflow nested under the parent."""
    from wmtp.recipes import run_recipe
    from wmtp.tracking.registry import build_run_logger, end_dead_attempt

    return run_recipe(cfg, make_logger=lambda c: build_run_logger(c, is_main=True, parent_run_id=parent_run_id),
                      end_dead_attempt=end_dead_attempt)


def trial_cpus(cfg: WMTPConfig) -> float:
    """CPUs a trial reserves: a sliver when a TorchTrainer's workers reserve their own, else the
    recipe's own CPU."""
    from wmtp.orchestration.tune import TRIAL_DRIVER_CPUS

    return TRIAL_DRIVER_CPUS if cfg.orchestration.enabled else float(cfg.orchestration.cpus_per_worker)


def run_study(spec: StudySpec, *, output_dir: str | None = None, results: str | None = "spec",
              command: str = "", log: Callable[[str], None] = print) -> StudyReport:
    """Run (or resume) the study; returns the aggregated report (written to `results`, default the spec's)."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from wmtp.orchestration.launch import run_training, with_absolute_paths
    from wmtp.orchestration.ray_runtime import cpus_needed, ensure_ray
    from wmtp.orchestration.storage import resolve_storage
    from wmtp.orchestration.tune import _parent_run

    t0 = time.perf_counter()
    plan = plan_study(spec, output_dir)
    log(plan.format())
    first = with_absolute_paths(next(iter(plan.configs.values())))
    per_trial = max((cpus_needed(c) if c.orchestration.enabled else 0) + trial_cpus(c) for c in plan.configs.values())
    ensure_ray(first.orchestration.address, local_cpus=spec.max_concurrent_trials * per_trial)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Stages once, shared (an existing export is reused).
    exports: dict[str, str] = {}
    measured_before = len(collect(plan)[0])
    stages_trained = []
    for name, stage in plan.stages.items():
        stage = with_absolute_paths(stage)
        export = export_dir(stage)
        if (export / "params.json").exists():
            log(f"[wmtp] study {spec.name}: reusing stage {name} {export}")
        else:
            log(f"[wmtp] study {spec.name}: running stage {name} (run {stage.run.name})")
            run_training(stage) if stage.orchestration.enabled else run_in_process(stage)
            stages_trained.append(name)
        exports[name] = str(export)
    configs = {m: with_absolute_paths(_with_stage_outputs(c, exports)).model_dump(mode="json")
               for m, c in plan.configs.items()}
    name = f"study-{spec.name}"
    parent = _parent_run(first, name, None)
    storage = resolve_storage(first.orchestration.storage_path, first.run.output_dir)
    trainable = tune.with_resources(
        tune.with_parameters(study_trial, configs=configs, plan=eval_plan(spec),
                             parent_run_id=parent.run_id if parent else None),
        {"CPU": max(trial_cpus(c) for c in plan.configs.values())})
    experiment = f"{storage.path.rstrip('/')}/{name}"
    try:
        if tune.Tuner.can_restore(experiment, storage_filesystem=storage.filesystem):
            log(f"[wmtp] study {spec.name}: resuming {experiment}")
            tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True,
                                       storage_filesystem=storage.filesystem)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"method": tune.grid_search(list(spec.methods)), "seed": tune.grid_search(spec.seeds)},
                tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.max_concurrent_trials,
                                            scheduler=FIFOScheduler()),
                run_config=tune.RunConfig(name=name, storage_path=storage.path,
                                          storage_filesystem=storage.filesystem,
                                          callbacks=[study_progress(spec.name, len(spec.methods) * len(spec.seeds),
                                                                    log)]),
            )
        tuner.fit()
        report = build_report(plan, time.perf_counter() - t0)
        report.record = {"wall_s": report.wall_s, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         "loadavg": list(os.getloadavg()), "command": command,
                         "runs_measured": len(report.runs), "runs_reused": measured_before,
                         "stages_trained": stages_trained, "stages_reused": [n for n in plan.stages
                                                                            if n not in stages_trained]}
        record_path(plan).parent.mkdir(parents=True, exist_ok=True)
        record_path(plan).write_text(json.dumps(report.record, indent=1))
        table = report.table
        if parent is not None:
            parent.log_params({"study.methods": ",".join(spec.methods), "study.seeds": ",".join(map(str, spec.seeds)),
                               "study.token_budget": plan.budget})
            parent.log_metrics({f"{m}/{k}": v[0] for m, row in table.items() for k, v in row.items()
                                if v[0] == v[0]}, step=0)
    finally:
        if parent is not None:
            parent.close()
    target = spec.results if results == "spec" else results
    if target:
        from wmtp.orchestration.study_report import write_results

        write_results(report, target, command=command)
        log(f"[wmtp] study {spec.name}: wrote {target}")
    return report


def build_report(plan: StudyPlan, wall_s: float) -> StudyReport:
    """Aggregate the measures found on disk (missing runs are listed, not guessed)."""
    from wmtp.evaluation.study_metrics import aggregate

    spec = plan.spec
    runs, missing = collect(plan)
    measures = main_measures(runs, spec)
    table = aggregate(runs, measures, n_bootstrap=spec.bootstrap)
    families = sorted({k.split("/", 1)[1] for r in runs for k in r.per_task if k.startswith("pass@1/")})
    family_table = aggregate(runs, [f"pass@1/{f}" for f in families], n_bootstrap=spec.bootstrap)
    return StudyReport(plan, runs, table, measures, family_table, families, wall_s, missing)


def report_only(spec: StudySpec, *, output_dir: str | None = None, results: str | None = "spec",
                command: str = "") -> StudyReport:
    """The table and report from the runs already measured on disk (nothing trains; no Ray)."""
    plan = plan_study(spec, output_dir)
    report = build_report(plan, float("nan"))
    report.record = read_record(plan)
    target = spec.results if results == "spec" else results
    if target:
        from wmtp.orchestration.study_report import write_results

        write_results(report, target, command=command)
    return report


def collect(plan: StudyPlan) -> tuple[list[RunMeasures], list[str]]:
    """The measures of every (method, seed) run found on disk; names of those without."""
    from wmtp.config.update import update_config

    runs: list[RunMeasures] = []
    missing: list[str] = []
    for _method, cfg in plan.configs.items():
        for seed in plan.spec.seeds:
            c = update_config(cfg, {"run.seed": seed, "run.name": cfg.run.name.rsplit("-s", 1)[0] + f"-s{seed}"},  # type: ignore[union-attr]  # a study run has a name
                              "study seed")
            path = run_dir(c) / MEASURES_FILE
            if path.is_file():
                from wmtp.evaluation.study_metrics import drop_empty_validation

                runs.append(drop_empty_validation(RunMeasures.from_json(json.loads(path.read_text())),
                                                  eval_plan(plan.spec).thresholds))
            else:
                missing.append(c.run.name)  # type: ignore[arg-type]  # a study run has a name
    return runs, missing


def machine() -> str:
    import torch

    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, "
            f"python {platform.python_version()}, torch {torch.__version__}")


__all__ = ["run_study", "plan_study", "StudyPlan", "StudyReport", "study_trial", "collect", "eval_plan", "record_path", "read_record"]

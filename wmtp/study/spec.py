"""Study specs for `wmtp study` (configs/study.*.yaml), validated before anything runs.

A study answers pre-stated claims with paired arms: within a *setting* every arm trains on the
same batches (same seeds, same `data.draw`) for the same steps and differs only in its token
weights. Format (every key below):

    name: micro                                  # runs are <name>-<arm>-s<seed>; stages <name>-ntp, <name>-critic
    config: configs/defaults.yaml                # the layered base: config → arm recipe → preset → flags → overrides
    preset: local-light
    use_micro_model: true
    overrides: {train.steps: 300}                # dotted, every run and stage
    stages:
      ntp: {overrides: {}, min_pass_at_1: 0.2}   # NTP on correct solutions: the budget's calibration and the Rho-1 reference
      critic: {overrides: {train.steps: 200}, min_final_value_auc: 0.8, max_decisive_td_auc: 0.4}   # from the NTP export
    settings:                                    # name → dotted overrides of its arms
      clean: {overrides: {data.samples: correct, data.draw: samples}, description: ...}
    arms:                                        # name → setting, recipe, dotted overrides
      uniform: {setting: clean, recipe: baseline, description: ...}
      critic: {setting: clean, recipe: verifiable, overrides: {stage2.value_weighting.source: critic}}
    claims:                                      # pre-stated: `arm` beats every arm of `against` on `measure`
      - {name: critic_helps, arm: critic, against: [uniform], statement: "critic weighting helps"}
    seeds: [0, 1, 2]
    max_concurrent_trials: 2
    evaluation: {max_new_tokens: 48, batch_size: 64, max_tasks: null, decisive_records: 256}
    bootstrap: 2000
    results: docs/RESULTS.md                     # where the report and its plot go (null: only print)

Verifiable arms score with the critic stage's export (frozen unless an arm turns its value loss
on); Rho-1 arms use the NTP stage's export as their reference (trained on correct solutions only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wmtp.config.loader import (
    ConfigError,
    find_config_file,
    format_validation_error,
    load_config,
    read_yaml_file,
)
from wmtp.config.paths import export_dir
from wmtp.config.schema import RecipeName, WMTPConfig
from wmtp.orchestration.home import anchor_outputs

MEASURES = ("pass@1", "ce_head1")  # the paired endpoints a claim may name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NtpStage(_Strict):
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides of the NTP stage.")
    min_pass_at_1: float = Field(0.2, ge=0, le=1, description="Greedy pass@1 on all test tasks the NTP stage must "
                                 "reach at the study's step count, else the budget is too small and the study stops.")


class CriticStage(_Strict):
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides of the critic stage.")
    min_final_value_auc: float = Field(0.8, ge=0, le=1, description="Gate: final-value AUC on all validation solutions.")
    max_decisive_td_auc: float = Field(0.4, ge=0, le=1, description="Gate: within-solution TD-error AUC at decisive tokens.")


class Stages(_Strict):
    ntp: NtpStage = Field(default_factory=NtpStage)
    critic: CriticStage = Field(default_factory=CriticStage)


class Setting(_Strict):
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides of every arm of the setting.")
    description: str = Field("", description="One line for the report.")


class Arm(_Strict):
    setting: str = Field(description="The setting whose batches this arm trains on.")
    recipe: RecipeName = Field(description="Recipe of this arm's runs.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted config overrides of this arm.")
    description: str = Field("", description="One line for the report's legend.")


class Claim(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="Short id of the claim.")
    statement: str = Field(description="The claim in words, stated before the study runs.")
    arm: str = Field(description="The arm the claim is about.")
    against: list[str] = Field(min_length=1, description="Arms it must beat (same setting), every one of them.")
    measure: Literal["pass@1", "ce_head1"] = Field("pass@1", description="The paired endpoint.")


class StudyEvaluation(_Strict):
    benchmark: Literal["synthetic", "humaneval", "jsonl"] = Field(
        "synthetic", description="Held-out tasks of greedy pass@1: the run's bundled test split, HumanEval, or a JSONL file.")
    path: str | None = Field(None, description="Task file (jsonl: required).")
    max_new_tokens: int = Field(48, ge=1, description="Greedy generation length limit.")
    batch_size: int = Field(64, ge=1, description="Prompts generated at once.")
    max_tasks: int | None = Field(None, ge=1, description="Only the first N test tasks (null: all; tests use a few).")
    max_valid_solutions: int | None = Field(None, ge=1, description="Only the first N validation solutions (null: all).")
    decisive_records: int = Field(256, ge=2, description="Incorrect validation solutions with a decisive span for "
                                  "the weights' within-solution AUC.")

    @model_validator(mode="after")
    def _path(self) -> StudyEvaluation:
        if self.benchmark == "jsonl" and not self.path:
            raise ValueError("evaluation.benchmark 'jsonl' needs evaluation.path")
        return self


class StudySpec(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Study name (run name prefix).")
    config: str = Field("configs/defaults.yaml", description="Defaults file of the layered base config.")
    preset: str | None = Field(None, description="Preset of every run (local-light, a100x4, or a YAML path).")
    use_micro_model: bool = Field(False, description="Apply --use-micro-model to every run.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides of every run and stage.")
    stages: Stages = Field(default_factory=Stages, description="The shared stages: NTP (calibration, reference), critic.")
    settings: dict[str, Setting] = Field(min_length=1, description="Setting name → overrides of its arms.")
    arms: dict[str, Arm] = Field(min_length=1, description="Arm name → setting, recipe and overrides.")
    claims: list[Claim] = Field(default_factory=list, description="Pre-stated claims the report answers.")
    seeds: list[int] = Field(min_length=1, description="run.seed of each run of every arm (paired across arms).")
    max_concurrent_trials: int = Field(1, ge=1, description="Runs trained at once (Ray Tune), one thread each.")
    evaluation: StudyEvaluation = Field(default_factory=StudyEvaluation, description="Held-out evaluation.")
    bootstrap: int = Field(2000, ge=10, description="Hierarchical bootstrap resamples of the paired CIs.")
    results: str | None = Field("docs/RESULTS.md", description="Markdown report written after the study (null: none).")

    @model_validator(mode="after")
    def _names(self) -> StudySpec:
        bad = [a for a in self.arms if not a.replace("_", "").replace("-", "").isalnum()]
        if bad:
            raise ValueError(f"arm names must be letters, digits, _ or -: {bad}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct: {self.seeds}")
        for arm, a in self.arms.items():
            if a.setting not in self.settings:
                raise ValueError(f"arm {arm}: unknown setting {a.setting!r}; allowed: {sorted(self.settings)}")
        for c in self.claims:
            for name in (c.arm, *c.against):
                if name not in self.arms:
                    raise ValueError(f"claim {c.name}: unknown arm {name!r}; allowed: {sorted(self.arms)}")
            settings = {self.arms[n].setting for n in (c.arm, *c.against)}
            if len(settings) > 1:
                raise ValueError(f"claim {c.name}: its arms are in different settings {sorted(settings)}: "
                                 "paired comparisons need the same batches")
        return self


def _dotted(values: dict[str, Any]) -> list[str]:
    """Dotted overrides as `key=value` strings the config loader parses (YAML flow values)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def _load(spec: StudySpec, recipe: str, overrides: dict[str, Any], what: str) -> WMTPConfig:
    try:
        return load_config(spec.config, recipe, spec.preset, spec.use_micro_model, _dotted(overrides))
    except ConfigError as e:
        raise ConfigError(f"study {spec.name}: {what}: {e}") from None


def stage_config(spec: StudySpec, stage: Literal["ntp", "critic"], output_dir: str | None = None) -> WMTPConfig:
    """The shared stage `ntp` (baseline recipe, one head, correct solutions) or `critic` (critic
    recipe started from the NTP export's whole trunk: one head, as that export), run once with the
    first seed."""
    base = {**spec.overrides, "run.seed": spec.seeds[0], "run.name": f"{spec.name}-{stage}",
            **({"run.output_dir": output_dir} if output_dir is not None else {})}
    if stage == "ntp":
        return _load(spec, "baseline", {**base, "model.n_future_tokens": 1, "data.samples": "correct",
                                         "data.draw": "samples", **spec.stages.ntp.overrides}, "stage ntp")
    ntp = stage_config(spec, "ntp", output_dir)
    return _load(spec, "critic", {**base, "model.checkpoint": str(export_dir(ntp)), "model.n_future_tokens": 1,
                                  "value_model.init_from_policy": True, **spec.stages.critic.overrides}, "stage critic")


def arm_config(spec: StudySpec, arm: str, seed: int, output_dir: str | None = None) -> WMTPConfig:
    """The resolved config of one (arm, seed) run, wired to the stages' exports (absolute: a trial
    runs in its own folder); errors name the arm."""
    a = spec.arms[arm]
    overrides = {**spec.overrides, **spec.settings[a.setting].overrides, "run.seed": seed,
                 "run.name": run_name(spec, arm, seed), **({"run.output_dir": output_dir} if output_dir else {})}
    if a.recipe == "verifiable":
        overrides.update({"value_model.checkpoint": str(export_dir(anchor_outputs(stage_config(spec, "critic", output_dir)))),
                          "stage2.value_loss.enabled": False})
    elif a.recipe == "rho1_weighted":
        overrides["rho1.reference"] = str(export_dir(anchor_outputs(stage_config(spec, "ntp", output_dir))))
    return _load(spec, a.recipe, {**overrides, **a.overrides}, f"arm {arm}")


def run_name(spec: StudySpec, arm: str, seed: int) -> str:
    return f"{spec.name}-{arm}-s{seed}"


def token_budget(cfg: WMTPConfig) -> int:
    """Token slots of a run: steps × sequences per step × max_seq_len."""
    workers = cfg.orchestration.num_workers if cfg.orchestration.enabled else 1
    return cfg.train.steps * cfg.data.batch_size * cfg.data.grad_accum * workers * cfg.data.max_seq_len


def check_budgets(spec: StudySpec, configs: dict[str, WMTPConfig]) -> int:
    """The common step budget (token slots); a ConfigError naming the arms when they differ. The
    trained targets, which masking and sampling decide, are counted per run by the measures."""
    budgets = {a: token_budget(c) for a, c in configs.items()}
    if len(set(budgets.values())) > 1:
        raise ConfigError(f"study {spec.name}: arms must share one budget (steps × batch × grad_accum × "
                          f"workers × max_seq_len); got {budgets}")
    return next(iter(budgets.values()))


def load_study_spec(path: str | Path) -> StudySpec:
    """Read and validate a configs/study.*.yaml file; errors name the file and the key."""
    found = find_config_file(path)
    try:
        spec = StudySpec.model_validate(read_yaml_file(found))
    except ValidationError as e:
        raise ConfigError(f"{found}: " + format_validation_error(e, root=StudySpec, what="study spec")) from None
    if not math.isfinite(float(spec.bootstrap)):
        raise ConfigError(f"{found}: bootstrap must be finite")
    return spec


__all__ = ["MEASURES", "Arm", "Claim", "Setting", "StudySpec", "StudyEvaluation", "arm_config", "check_budgets",
           "load_study_spec", "run_name", "stage_config", "token_budget"]

"""Study specs for `wmtp study` (configs/study.*.yaml), validated before anything runs.

A study is a grid of methods × seeds on one base configuration; every (method, seed) is one full
training run, and each method's config must give the same token budget (steps × batch × grad
accumulation × workers × max_seq_len). Format (every key below):

    name: micro                                  # runs are <name>-<method>-s<seed>; stages <name>-critic, <name>-ref_tuning
    config: configs/defaults.yaml                # the layered base: config → method recipe → preset → flags → overrides
    preset: local-light
    use_micro_model: true
    overrides: {train.steps: 120, data.batch_size: 8}   # dotted, every run and stage
    stages:                                      # producing stages, run once and shared (dotted overrides)
      critic: {train.steps: 150}
      ref_tuning: {train.steps: 150}
    methods:                                     # name → recipe + dotted overrides
      ntp: {recipe: baseline, overrides: {model.n_future_tokens: 1}}
      critic_frozen: {recipe: verifiable, overrides: {stage2.value_loss.enabled: false}}
    seeds: [0, 1, 2]
    max_concurrent_trials: 2
    thresholds: {val/ce: {level: 1.2, mode: min}, eval/pass_at_1: {level: 0.25, mode: max}}
    evaluation: {benchmarks: [{name: synthetic}], tasks_per_family: 2, n_samples: 5, ks: [1, 5]}
    bootstrap: 1000
    results: docs/RESULTS.md                     # where the table, plot and statement go (null: only print)
"""

from __future__ import annotations

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
from wmtp.config.schema import RecipeName, WMTPConfig

StageName = Literal["critic", "ref_tuning"]  # the producing stages a study runs once
# The recipe whose output each producing stage provides, and the method recipes that read it.
STAGE_FOR_RECIPE: dict[str, StageName] = {"verifiable": "critic", "rho1_weighted": "ref_tuning"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudyMethod(_Strict):
    recipe: RecipeName = Field(description="Recipe of this method's runs.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted config overrides of this method.")
    description: str = Field("", description="One line for the results table's legend.")


class Threshold(_Strict):
    level: float = Field(description="The level to cross.")
    mode: Literal["min", "max"] = Field(description="min: first value <= level; max: first value >= level.")


class Benchmark(_Strict):
    name: Literal["synthetic", "humaneval", "jsonl"] = Field(description="wmtp eval benchmark name.")
    path: str | None = Field(None, description="Task file (jsonl: required; synthetic: default the run's bundled test split).")

    @model_validator(mode="after")
    def _path(self) -> Benchmark:
        if self.name == "jsonl" and not self.path:
            raise ValueError("benchmark 'jsonl' needs a path")
        return self


class StudyEvaluation(_Strict):
    benchmarks: list[Benchmark] = Field(default_factory=lambda: [Benchmark(name="synthetic")], min_length=1,
                                        description="Held-out tasks for pass@k.")
    tasks_per_family: int | None = Field(None, ge=1, description="At most this many tasks per template family (null: all).")
    n_samples: int = Field(5, ge=1, description="Sampled completions per task for pass@k, k > 1.")
    ks: list[int] = Field([1, 5], min_length=1, description="pass@k values (1 is greedy).")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature for pass@k, k > 1.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling for pass@k, k > 1.")
    max_new_tokens: int = Field(128, ge=1, description="Generation length limit.")
    batch_size: int = Field(32, ge=1, description="Prompts generated at once.")
    decisive_records: int = Field(64, ge=2, description="Incorrect validation solutions for the decisive-token share.")

    @model_validator(mode="after")
    def _ks(self) -> StudyEvaluation:
        too_big = [k for k in self.ks if k > 1 and k > self.n_samples]
        if too_big or any(k < 1 for k in self.ks):
            raise ValueError(f"ks {self.ks} must be >= 1 and <= n_samples={self.n_samples}")
        return self


class StudySpec(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Study name (run name prefix).")
    config: str = Field("configs/defaults.yaml", description="Defaults file of the layered base config.")
    preset: str | None = Field(None, description="Preset of every run (local-light, a100x4, or a YAML path).")
    use_micro_model: bool = Field(False, description="Apply --use-micro-model to every run.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides of every run and stage.")
    stages: dict[StageName, dict[str, Any]] = Field(
        default_factory=dict, description="Dotted overrides of the producing stages (run once, shared).")
    methods: dict[str, StudyMethod] = Field(min_length=1, description="Method name → recipe and overrides.")
    seeds: list[int] = Field(min_length=1, description="run.seed of each run of every method.")
    max_concurrent_trials: int = Field(1, ge=1, description="Runs trained at once (Ray Tune).")
    thresholds: dict[str, Threshold] = Field(default_factory=dict,
                                             description="Curve key (val/ce, eval/pass_at_1) → level for time-to-threshold.")
    evaluation: StudyEvaluation = Field(default_factory=StudyEvaluation, description="Held-out evaluation.")
    bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples of the confidence intervals.")
    results: str | None = Field("docs/RESULTS.md", description="Markdown report written after the study (null: none).")

    @model_validator(mode="after")
    def _names(self) -> StudySpec:
        bad = [m for m in self.methods if not m.replace("_", "").replace("-", "").isalnum()]
        if bad:
            raise ValueError(f"method names must be letters, digits, _ or -: {bad}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct: {self.seeds}")
        unknown = sorted(set(self.thresholds) - {"val/ce", "eval/pass_at_1"})
        if unknown:
            raise ValueError(f"thresholds: unknown curve keys {unknown}; allowed: val/ce, eval/pass_at_1")
        return self


def _dotted(values: dict[str, Any]) -> list[str]:
    """Dotted overrides as `key=value` strings the config loader parses (YAML flow values)."""
    import json

    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def method_config(spec: StudySpec, method: str, seed: int, output_dir: str | None = None) -> WMTPConfig:
    """The resolved config of one (method, seed) run; errors name the method."""
    m = spec.methods[method]
    overrides = {**spec.overrides, **m.overrides, "run.seed": seed, "run.name": run_name(spec, method, seed)}
    if output_dir is not None:
        overrides["run.output_dir"] = output_dir
    try:
        return load_config(spec.config, m.recipe, spec.preset, spec.use_micro_model, _dotted(overrides))
    except ConfigError as e:
        raise ConfigError(f"study {spec.name}: method {method}: {e}") from None


def stage_config(spec: StudySpec, stage: StageName, output_dir: str | None = None) -> WMTPConfig:
    """The producing stage `critic` | `ref_tuning` (run once, seed of the first seed)."""
    overrides = {**spec.overrides, **spec.stages.get(stage, {}), "run.seed": spec.seeds[0],
                 "run.name": f"{spec.name}-{stage}"}
    if stage == "ref_tuning":
        overrides.setdefault("model.n_future_tokens", 1)
    if output_dir is not None:
        overrides["run.output_dir"] = output_dir
    try:
        return load_config(spec.config, stage, spec.preset, spec.use_micro_model, _dotted(overrides))
    except ConfigError as e:
        raise ConfigError(f"study {spec.name}: stage {stage}: {e}") from None


def run_name(spec: StudySpec, method: str, seed: int) -> str:
    return f"{spec.name}-{method}-s{seed}"


def token_budget(cfg: WMTPConfig) -> int:
    """Token slots of a run: steps × sequences per step × max_seq_len (the budget every method shares)."""
    workers = cfg.orchestration.num_workers if cfg.orchestration.enabled else 1
    return cfg.train.steps * cfg.data.batch_size * cfg.data.grad_accum * workers * cfg.data.max_seq_len


def check_budgets(spec: StudySpec, configs: dict[str, WMTPConfig]) -> int:
    """The common token budget; a ConfigError naming the methods when they differ."""
    budgets = {m: token_budget(c) for m, c in configs.items()}
    if len(set(budgets.values())) > 1:
        raise ConfigError(f"study {spec.name}: methods must share one token budget (steps × batch × grad_accum × "
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


__all__ = ["StudySpec", "StudyMethod", "StudyEvaluation", "Threshold", "Benchmark", "STAGE_FOR_RECIPE", "StageName",
           "load_study_spec", "method_config", "stage_config", "check_budgets", "token_budget", "run_name"]

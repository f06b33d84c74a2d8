"""Tune sweeps, the config layer; the same concept as wmtp.orchestration.tune: the search space.

Search spaces for `wmtp tune` (tune_spaces/*.yaml), validated before any trial starts.

Format (every key documented in docs/CONFIG.md):

    recipe: verifiable                 # the recipe the space is meant for (checked by the tuner)
    metric: val/ce_head1             # a metric the recipe reports on validation
    mode: min                          # min | max
    num_samples: 8                     # trials
    max_concurrent_trials: 2           # null: as many as resources allow
    scheduler: {type: asha, max_t: 200, grace_period: 20, reduction_factor: 2}
    fixed: {train.steps: 200}          # dotted overrides applied to every trial
    space:                             # dotted config key → distribution
      stage2.value_weighting.weight_temperature: {type: loguniform, lower: 0.25, upper: 4.0}
      stage2.value_weighting.td_error_normalization: {type: choice, values: [zscore, ema]}

Each dotted key must name a field of `WMTPConfig`, and every value a distribution can produce
(bounds, choices) must pass that field's own validation, so a typo fails here, not in trial 7.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from wmtp.config.loader import ConfigError, find_config_file, format_validation_error, read_yaml_file
from wmtp.config.schema import RecipeName, WMTPConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogUniform(_Strict):
    type: Literal["loguniform"] = Field(description="Log-uniform float in [lower, upper].")
    lower: float = Field(gt=0, description="Lower bound (> 0).")
    upper: float = Field(gt=0, description="Upper bound.")

    @model_validator(mode="after")
    def _order(self) -> LogUniform:
        if self.lower >= self.upper:
            raise ValueError(f"lower={self.lower} must be < upper={self.upper}")
        return self

    def candidates(self) -> list[Any]:
        return [self.lower, self.upper]


class Uniform(_Strict):
    type: Literal["uniform"] = Field(description="Uniform float in [lower, upper].")
    lower: float = Field(description="Lower bound.")
    upper: float = Field(description="Upper bound.")

    @model_validator(mode="after")
    def _order(self) -> Uniform:
        if self.lower >= self.upper:
            raise ValueError(f"lower={self.lower} must be < upper={self.upper}")
        return self

    def candidates(self) -> list[Any]:
        return [self.lower, self.upper]


class RandInt(_Strict):
    type: Literal["randint"] = Field(description="Integer in [lower, upper) (Ray Tune's convention).")
    lower: int = Field(description="Lower bound, inclusive.")
    upper: int = Field(description="Upper bound, exclusive.")

    @model_validator(mode="after")
    def _order(self) -> RandInt:
        if self.lower >= self.upper:
            raise ValueError(f"lower={self.lower} must be < upper={self.upper}")
        return self

    def candidates(self) -> list[Any]:
        return [self.lower, self.upper - 1]


class Choice(_Strict):
    type: Literal["choice"] = Field(description="One of the listed values.")
    values: list[Any] = Field(min_length=1, description="The values to choose from.")

    def candidates(self) -> list[Any]:
        return list(self.values)


Distribution = Annotated[LogUniform | Uniform | RandInt | Choice, Field(discriminator="type")]


class AshaScheduler(_Strict):
    type: Literal["asha"] = Field("asha", description="Asynchronous successive halving (ASHA).")
    max_t: int = Field(ge=1, description="Most training iterations (reports) a trial may run.")
    grace_period: int = Field(1, ge=1, description="Iterations before a trial may be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="Keep 1/reduction_factor of trials per rung.")

    @model_validator(mode="after")
    def _order(self) -> AshaScheduler:
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period={self.grace_period} must be <= max_t={self.max_t}")
        return self


class FifoScheduler(_Strict):
    type: Literal["fifo"] = Field(description="Run every trial to the end.")


class TuneSpace(_Strict):
    """A validated search space; `space` keys are dotted `WMTPConfig` paths."""

    recipe: RecipeName | None = Field(None, description="Recipe the space is meant for.")
    metric: str = Field(min_length=1, description="Validation metric the scheduler ranks trials by.")
    mode: Literal["min", "max"] = Field(description="Whether lower or higher metric is better.")
    num_samples: int = Field(ge=1, description="Number of trials.")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Trials run at once (null: resources decide).")
    scheduler: Annotated[AshaScheduler | FifoScheduler, Field(discriminator="type")] = Field(
        default_factory=lambda: AshaScheduler(max_t=100), description="Trial scheduler.")
    fixed: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides applied to every trial.")
    space: dict[str, Distribution] = Field(min_length=1, description="Dotted config key → distribution.")

    @model_validator(mode="after")
    def _keys_exist(self) -> TuneSpace:
        problems = []
        for key, dist in self.space.items():
            problems += _check_values(key, dist.candidates())
        for key, value in self.fixed.items():
            problems += _check_values(key, [value])
        overlap = sorted(set(self.space) & set(self.fixed))
        if overlap:
            problems.append(f"keys both searched and fixed: {', '.join(overlap)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _field_adapter(key: str) -> TypeAdapter[Any] | str:
    """A validator for the config field at dotted `key`, or an error message."""
    cls: Any = WMTPConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = cls.model_fields
        if part not in fields:
            under = ".".join(parts[:i]) or "the top level"
            return f"unknown key {key}; allowed keys under {under}: {', '.join(sorted(fields))}"
        field = fields[part]
        annotation = field.annotation
        if i == len(parts) - 1:
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                return f"{key} is a section, not a value"
            return TypeAdapter(Annotated[annotation, *field.metadata] if field.metadata else annotation)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return f"{key}: {'.'.join(parts[:i + 1])} is a value, not a section"
        cls = annotation
    return f"unknown key {key}"


def _check_values(key: str, values: list[Any]) -> list[str]:
    adapter = _field_adapter(key)
    if isinstance(adapter, str):
        return [adapter]
    problems = []
    for value in values:
        try:
            adapter.validate_python(value)
        except ValidationError as e:
            problems.append(f"{key}={value!r}: {e.errors()[0]['msg']}")
    return problems


def load_tune_space(path: str | Path) -> TuneSpace:
    """Read and validate a tune_spaces/*.yaml file; errors name the file and the key."""
    found = find_config_file(path)
    try:
        return TuneSpace.model_validate(read_yaml_file(found))
    except ValidationError as e:
        raise ConfigError(f"{found}: " + format_validation_error(e, root=TuneSpace, what="tune space")) from None


__all__ = ["TuneSpace", "LogUniform", "Uniform", "RandInt", "Choice", "AshaScheduler", "FifoScheduler",
           "load_tune_space"]

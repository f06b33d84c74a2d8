"""Every implementation of a Protocol the recipes use, given where that Protocol is expected.

Never run (pytest collects only test_*.py): mypy reads it (`[tool.mypy] files`, run by
tests/test_types.py), so a method that drifts from its Protocol (a renamed parameter, a missing
method, another return type) fails type checking here, whichever floor the implementation lives on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from wmtp.checkpoint import LocalCheckpointSink
    from wmtp.evaluation.generation import TextTokenizer
    from wmtp.evaluation.runner import MetricsSink
    from wmtp.model.tokenizer import Tokenizer
    from wmtp.orchestration.console import ForwardingConsole
    from wmtp.orchestration.experience import AsyncExperienceScorer
    from wmtp.orchestration.reporting import RayCheckpointSink, RayMetricLogger
    from wmtp.recipes import Recipe
    from wmtp.recipes.baseline import BaselineRecipe
    from wmtp.recipes.critic import CriticRecipe
    from wmtp.recipes.experience import LearnerScorer
    from wmtp.recipes.interfaces import CheckpointSink, ExperienceScorer, ScorerFactory
    from wmtp.recipes.loop import Steps
    from wmtp.recipes.ref_tuning import RefTuningRecipe
    from wmtp.recipes.rho1_weighted import PrecomputedScorer, Rho1WeightedRecipe
    from wmtp.recipes.verifiable import VerifiableRecipe
    from wmtp.tracking.base import MetricLogger, MultiLogger, NullLogger
    from wmtp.tracking.console import RunConsole
    from wmtp.tracking.jsonl import JsonlLogger
    from wmtp.tracking.mlflow_logger import MlflowLogger
    from wmtp.weighting.normalize import EMANormalizer, IdentityNormalizer, Normalizer, ZScoreNormalizer


def checkpoint_sinks(local: LocalCheckpointSink, ray: RayCheckpointSink) -> list[CheckpointSink]:
    return [local, ray]


def experience_scorers(learner: LearnerScorer, precomputed: PrecomputedScorer,
                       actors: AsyncExperienceScorer) -> list[ExperienceScorer]:
    return [learner, precomputed, actors]


def scorer_factories(make_async: Callable[..., AsyncExperienceScorer]) -> ScorerFactory:
    return make_async


def metric_loggers(null: NullLogger, multi: MultiLogger, jsonl: JsonlLogger, mlflow: MlflowLogger,
                   console: RunConsole, forwarding: ForwardingConsole, ray: RayMetricLogger) -> list[MetricLogger]:
    return [null, multi, jsonl, mlflow, console, forwarding, ray]


def metrics_sinks(logger: MetricLogger) -> MetricsSink:
    return logger


def recipes() -> list[Callable[..., Recipe]]:
    return [BaselineRecipe, RefTuningRecipe, CriticRecipe, VerifiableRecipe, Rho1WeightedRecipe]


def stepped_recipes(baseline: BaselineRecipe, critic: CriticRecipe, verifiable: VerifiableRecipe,
                    rho1: Rho1WeightedRecipe) -> list[Steps]:
    return [baseline, critic, verifiable, rho1]


def normalizers(zscore: ZScoreNormalizer, ema: EMANormalizer, identity: IdentityNormalizer) -> list[Normalizer]:
    return [zscore, ema, identity]


def text_tokenizers(tokenizer: Tokenizer) -> TextTokenizer:
    return tokenizer

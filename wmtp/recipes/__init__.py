"""Recipes: one readable file per training method (build → setup → train → close).

`build_recipe(cfg, logger=..., checkpoint_sink=..., scorer_factory=None, env=None)` picks a recipe by name;
`run_recipe(cfg)` runs one in this process (tests, debugging: `wmtp train --local`). Ray workers
call `build_recipe` with Ray's sink and logger (`wmtp.orchestration`); recipes never import ray.
Both end in `wmtp.recipes.loop.run`, and every recipe's `train()` is the one step schedule
(`wmtp.recipes.loop.train`) over its own `step()`, `evaluate()` and `export()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from wmtp.config.schema import WMTPConfig

if TYPE_CHECKING:
    from wmtp.recipes.interfaces import CheckpointSink, RecipeEnv, ScorerFactory
    from wmtp.tracking.base import MetricLogger


class Recipe(Protocol):
    """What runs a recipe sees (`build_recipe` makes one; `wmtp.recipes.loop.run` drives it)."""

    def setup(self) -> None:
        """Build the models, data and loop state; resume from the sink's newest good checkpoint."""
        ...

    def train(self) -> dict[str, float]:
        """The steps after the resumed one, then the export; the last train and validation metrics."""
        ...

    def close(self) -> None:
        """Release what setup() started (scorers, actors); also after a failed setup()."""
        ...


def _registry() -> dict[str, Callable[..., Recipe]]:
    from wmtp.recipes.baseline import BaselineRecipe
    from wmtp.recipes.critic import CriticRecipe
    from wmtp.recipes.ref_tuning import RefTuningRecipe
    from wmtp.recipes.rho1_weighted import Rho1WeightedRecipe
    from wmtp.recipes.verifiable import VerifiableRecipe

    return {"baseline": BaselineRecipe, "ref_tuning": RefTuningRecipe, "critic": CriticRecipe,
            "verifiable": VerifiableRecipe, "rho1_weighted": Rho1WeightedRecipe}


def build_recipe(cfg: WMTPConfig, *, logger: MetricLogger, checkpoint_sink: CheckpointSink,
                 scorer_factory: ScorerFactory | None = None, env: RecipeEnv | None = None) -> Recipe:
    """`env`: the recipe's environment (`wmtp.recipes.interfaces.RecipeEnv`); None: training's."""
    from wmtp.recipes.interfaces import training_env
    from wmtp.training.device_memory import configure_allocator

    configure_allocator()  # before any model is built (docs/MEMORY.md "The allocator")
    recipes = _registry()
    if cfg.recipe not in recipes:
        raise ValueError(f"recipe: unknown recipe {cfg.recipe!r}; allowed: {sorted(recipes)}")
    return recipes[cfg.recipe](cfg, logger=logger, checkpoint_sink=checkpoint_sink, scorer_factory=scorer_factory,
                               env=env or training_env(cfg))


def run_recipe(cfg: WMTPConfig, *, make_logger: Callable[..., Any], brief: bool = False,
               end_dead_attempt: Callable[[Any, str], Any] | None = None) -> dict[str, float]:
    """Run `cfg.recipe` in this process (the debuggable path): local checkpoints (rerun the same
    command to resume), a logger from `make_logger(cfg)` (the caller picks the backends: recipes
    never import a tracking service), and the producing stages first when an input is missing
    (`brief`: such a producing stage, whose console summary is one line). `end_dead_attempt(run_dir,
    reason)`: called when this start takes over the stale lock of a killed one, before the logger
    continues its run (`wmtp.recipes.loop.claim`)."""
    from wmtp.checkpoint import LocalCheckpointSink
    from wmtp.config.paths import run_dir
    from wmtp.recipes.chain import resolve_inputs
    from wmtp.recipes.loop import claim, run
    from wmtp.tracking.console import report_failure

    cfg = resolve_inputs(cfg, lambda stage: run_recipe(stage, make_logger=make_logger, brief=True,
                                                       end_dead_attempt=end_dead_attempt))
    lock = claim(cfg, end_dead_attempt)
    logger = make_logger(cfg, brief=brief) if brief else make_logger(cfg)
    recipe = build_recipe(cfg, logger=logger,
                          checkpoint_sink=LocalCheckpointSink(run_dir(cfg), keep=cfg.orchestration.keep_checkpoints))
    return run(recipe, cfg, logger, on_failure=report_failure, closers=[lock.release])

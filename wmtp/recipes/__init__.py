"""Recipes: one readable file per training method (build → setup → train → close).

`build_recipe(cfg, logger=..., checkpoint_sink=..., scorer_factory=None, env=None)` picks a recipe by name;
`run_recipe(cfg)` runs one in this process (tests, debugging: `wmtp train --local`). Ray workers
call `build_recipe` with Ray's sink and logger (`wmtp.orchestration`); recipes never import ray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from wmtp.config.schema import WMTPConfig

if TYPE_CHECKING:
    from wmtp.recipes.interfaces import CheckpointSink, RecipeEnv, ScorerFactory
    from wmtp.tracking.base import MetricLogger


class Recipe(Protocol):
    def setup(self) -> None: ...

    def train(self) -> dict[str, float]: ...

    def close(self) -> None: ...


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
    continues its run (`wmtp.tracking.registry.end_dead_attempt`: MLflow marks it KILLED)."""
    from wmtp.checkpoint import LocalCheckpointSink
    from wmtp.config.paths import run_dir, write_resolved_config
    from wmtp.recipes.chain import resolve_inputs
    from wmtp.tracking.console import end_run, status_of
    from wmtp.tracking.phases import timed
    from wmtp.training.runlock import hold_run_lock

    cfg = resolve_inputs(cfg, lambda stage: run_recipe(stage, make_logger=make_logger, brief=True,
                                                       end_dead_attempt=end_dead_attempt))
    lock = hold_run_lock(run_dir(cfg))  # a second start of the same run exits 2, naming this one
    if lock.takeover_reason is not None and end_dead_attempt is not None:
        end_dead_attempt(run_dir(cfg), lock.takeover_reason)  # the killed attempt could not end its run
    logger = make_logger(cfg, brief=brief) if brief else make_logger(cfg)
    recipe = build_recipe(cfg, logger=logger,
                          checkpoint_sink=LocalCheckpointSink(run_dir(cfg), keep=cfg.orchestration.keep_checkpoints))
    error: BaseException | None = None
    try:
        with timed("setup"):
            recipe.setup()
        # Written once training starts: a run that fails before leaves an earlier run's config.yaml.
        logger.log_artifact(write_resolved_config(cfg))
        return recipe.train()
    except BaseException as exc:
        error = exc
        from wmtp.tracking.console import report_failure

        report_failure(exc)
        raise
    finally:
        with timed("shutdown"):
            # The console's summary and MLflow's status say how it ended (FAILED / KILLED + reason);
            # a close error after a failure is logged, never hiding the error that ended the run.
            close_all([recipe.close, lambda: end_run(logger, *status_of(error)), lock.release], error is not None)


def close_all(closers: list[Callable[[], Any]], failed: bool) -> None:
    """Call every closer. After a failure an error while closing is logged, not raised, so the
    error that ended the run is the one the user sees (not e.g. an AttributeError of a part that
    setup() never built)."""
    import logging

    first: BaseException | None = None
    for close in closers:
        try:
            close()
        except Exception as e:  # noqa: BLE001 - reported below
            if failed:
                logging.getLogger(__name__).warning("while closing after a failure: %s: %s", type(e).__name__, e)
            elif first is None:
                first = e
    if first is not None:
        raise first

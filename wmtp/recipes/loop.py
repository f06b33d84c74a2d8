"""The run's life, written once: `claim` (the run lock), `run` (setup → the resolved config as an
artifact → train → close with the final status) and `run_steps` (the step schedule: for each step
the recipe's `step()`, then metering, logging, validation and checkpoints at their cadences; then
the recipe's export). `run_recipe` (in this process) and the Ray Train worker
(`wmtp.orchestration.launch`) both end in `run`; every recipe's `train()` is `run_steps(self)`.
A recipe file keeps what makes it that recipe: its models and loop state (`setup()`, which ends
by resuming through `wmtp.training.state.resume_or_start`: what follows a resume is the recipe's,
e.g. verifiable publishes the restored critic), its `step()`, its `evaluate()` and its `export()`.

Every rank runs the same loop, so every rank logs and checkpoints (Ray: reports) the same number
of times. A step returns `(stats, count)`: `stats` are 0-dim tensors, not synced, or None when
the non-finite guard skipped the batch, or `{}` on a step that logs nothing (`log_due`): the
collectives that only feed metrics (global sums for logging, gathers, per-rank values) run on
logging steps alone, as in torchtitan, while those that change training (loss denominators, weight
normalisation, gradient norms, the non-finite guard) run every step. `count` is the step's
`wmtp.training.throughput.count_step` (tokens and trained targets, a device tensor), the one count
of every recipe. The rest of this module: the pieces steps use to report their metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from wmtp.config.schema import TrainConfig, WMTPConfig
from wmtp.parallel import reduce
from wmtp.parallel.reduce import DistEnv
from wmtp.recipes.interfaces import CheckpointSink
from wmtp.tracking.base import MetricLogger
from wmtp.tracking.phases import timed
from wmtp.training.state import LoopState
from wmtp.weighting.diagnostics import pooled_diagnostics, relative_position

if TYPE_CHECKING:
    from wmtp.recipes import Recipe
    from wmtp.training.runlock import RunLock

# What `step()` returns: (unsynced 0-dim stats (floats: host values such as the learning rate),
# None for a skipped batch, {} off logging steps; this rank's `count_step`).
StepResult = tuple[Mapping[str, Tensor | float] | None, Tensor]


class Steps(Protocol):
    """What `run_steps` drives: a recipe after its setup()."""

    cfg: WMTPConfig
    logger: MetricLogger
    sink: CheckpointSink
    state: LoopState  # what a checkpoint holds (models, optimisers, stream, guard, meter)
    start: int  # the step setup() resumed from (0: a fresh run)

    def step(self, step: int) -> StepResult: ...

    def evaluate(self, step: int) -> dict[str, float]:
        """Validation metrics of `step` (every rank calls it at the same steps)."""
        ...

    def export(self) -> None:
        """Write the trained model(s) for the next stage and `wmtp eval`."""
        ...


def claim(cfg: WMTPConfig, end_dead_attempt: Callable[[Path, str], Any] | None = None) -> RunLock:
    """The run's lock: a second start of the same run exits 2, naming this one. When this start
    takes over the stale lock of a killed one, `end_dead_attempt(run_dir, reason)` ends the killed
    attempt's tracked run first (`wmtp.tracking.registry.end_dead_attempt`: MLflow marks it KILLED)."""
    from wmtp.config.paths import run_dir
    from wmtp.training.runlock import hold_run_lock

    lock = hold_run_lock(run_dir(cfg))
    if lock.takeover_reason is not None and end_dead_attempt is not None:
        end_dead_attempt(run_dir(cfg), lock.takeover_reason)  # the killed attempt could not end its run
    return lock


def run(recipe: Recipe, cfg: WMTPConfig, logger: MetricLogger, *, log_config: bool = True,
        report: Callable[[dict[str, float]], Any] | None = None,
        on_failure: Callable[[BaseException], Any] | None = None,
        closers: Sequence[Callable[[], Any]] = ()) -> dict[str, float]:
    """The run's life: `recipe.setup()`, the resolved config as an artifact (`log_config`: the rank
    that logs), `recipe.train()` and `report(final metrics)`; then, however it ended, close the
    recipe, end the logger's run with its status (FAILED / KILLED + reason) and call `closers`
    (`close_all`). `on_failure(error)` runs before closing (the console prints the traceback before
    its summary). Returns the final metrics."""
    from wmtp.config.paths import write_resolved_config
    from wmtp.tracking.console import end_run, status_of

    error: BaseException | None = None
    try:
        with timed("setup"):
            recipe.setup()
        # Written once training starts: a run that fails before leaves an earlier run's config.yaml.
        if log_config:
            logger.log_artifact(write_resolved_config(cfg))
        final = recipe.train()
        if report is not None:
            report(final)
        return final
    except BaseException as exc:
        error = exc
        if on_failure is not None:
            on_failure(exc)
        raise
    finally:
        with timed("shutdown"):
            close_all([recipe.close, lambda: end_run(logger, *status_of(error)), *closers], error is not None)


def close_all(closers: Sequence[Callable[[], Any]], failed: bool) -> None:
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


def run_steps(recipe: Steps) -> dict[str, float]:
    """The step schedule, once for every recipe: steps `recipe.start + 1 .. train.steps`, each
    metered, logged (`train.log_every`), validated (`validation_due`) and checkpointed
    (`train.checkpoint_every`), the last step all three; then `recipe.export()`. Returns the last
    train and validation metrics."""
    tcfg, logger, state = recipe.cfg.train, recipe.logger, recipe.state
    last_train: dict[str, float] = {}
    last_val: dict[str, float] = {}
    with timed("loop"):
        state.meter.start()
        for step in range(recipe.start + 1, tcfg.steps + 1):
            stats, count = recipe.step(step)
            state.meter.update(count, trained=stats is not None)
            if log_due(step, tcfg):
                last_train = log_step(logger, step, stats, last_train, state)
            if validation_due(step, tcfg):
                with timed("validation"):
                    last_val = recipe.evaluate(step)
                logger.log_metrics(last_val, step)
            if due(step, tcfg.checkpoint_every, tcfg.steps):
                with timed("checkpoints"):
                    save_checkpoint(recipe.sink, state, step, {**last_train, **last_val})
    with timed("export"):
        recipe.export()
    return {**last_train, **last_val}


def due(step: int, every: int, last: int) -> bool:
    """Every `every` steps, and at the last step."""
    return step % every == 0 or step == last


def log_due(step: int, tcfg: TrainConfig) -> bool:
    """Whether `step` logs its train metrics (`train.log_every`, and the last step). It depends on
    the step number alone, so every rank takes the same branch around the metric collectives."""
    return due(step, tcfg.log_every, tcfg.steps)


def validation_due(step: int, tcfg: TrainConfig) -> bool:
    """Validation at its cadence, and at the pass@1 cadence (`train.eval_generate_every`)."""
    return due(step, tcfg.eval_every, tcfg.steps) or bool(tcfg.eval_generate_every
                                                          and step % tcfg.eval_generate_every == 0)


def to_floats(stats: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """One host sync for all tensor stats."""
    keys = [k for k, v in stats.items() if isinstance(v, torch.Tensor)]
    values = torch.stack([stats[k].detach().double().cpu() for k in keys]).tolist() if keys else []  # type: ignore[union-attr]  # keys holds the tensor entries
    out = dict(zip(keys, values))
    out.update({k: float(v) for k, v in stats.items() if not isinstance(v, torch.Tensor)})
    return out


def log_step(logger: MetricLogger, step: int, stats: Mapping[str, Tensor | float] | None, last_train: dict[str, float],
             state: LoopState) -> dict[str, float]:
    """Log this step's train stats with the meter's and the loop's own metrics; returns the train
    stats to keep. A skipped (non-finite) step still logs the loop's metrics, e.g. the skip count."""
    if stats is not None:
        last_train = to_floats(stats)
    logger.log_metrics({**(last_train if stats is not None else {}), **state.meter.metrics(), **state.metrics()},
                       step)
    return last_train


def save_checkpoint(sink: CheckpointSink, state: LoopState, step: int, metrics: Mapping[str, float]) -> None:
    """`state` written as the checkpoint of `step` (every rank its shards), published by `sink`;
    non-finite weights are never written (the guard stops the run, naming the step)."""
    state.guard.check_weights(state.all_models(), step)
    sink.save(step, lambda path: state.write(path, step), {**metrics, "step": float(step)})


def head_metrics(prefix: str, values: Tensor) -> dict[str, Tensor]:
    """`[H]` tensor → {prefix_head1: 0-dim tensor, ...} (synced later, once, by the loop)."""
    return {f"{prefix}_head{k + 1}": v for k, v in enumerate(values.unbind())}


def stat_tensors(prefix: str, stats: Any) -> dict[str, Tensor]:
    """A stats dataclass (WeightStats, Rho1Stats) as unsynced tensors for the loop to log:
    0-dim fields as `prefix/name`, `[H]` fields as `prefix/name/head<k>`."""
    out: dict[str, Tensor] = {}
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        if value.dim() == 0:
            out[f"{prefix}/{f.name}"] = value
        else:
            out.update({f"{prefix}/{f.name}/head{k + 1}": v for k, v in enumerate(value.unbind())})
    return out


def weight_diagnostics(w: Tensor, mask: Tensor, layout: DistEnv, capacity: int,
                       prefix: str = "train/weights") -> dict[str, Tensor]:
    """The step's token-weight diagnostics over its global batch (docs/MATH.md "Weight
    diagnostics"): every rank's (weight, relative position, valid) triples of `w, mask [B, S]`
    gathered at a fixed size (`capacity` ≥ B·S targets per rank: no host sync) and pooled; 0-dim
    tensors, synced with the other stats."""
    m = mask.bool()
    triples = torch.stack([w.detach().double(), relative_position(m), m.double()], dim=-1).flatten()
    pooled = reduce.gather_fixed(triples, 3 * capacity, layout).view(-1, 3)
    return pooled_diagnostics(pooled[:, 0], pooled[:, 1], pooled[:, 2] > 0, f"{prefix}/")


def step_capacity(cfg: WMTPConfig) -> int:
    """Most targets one rank's step can hold: every micro-batch full at `data.max_seq_len`."""
    return cfg.data.batch_size * cfg.data.grad_accum * cfg.data.max_seq_len

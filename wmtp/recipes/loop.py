"""The step loop every recipe runs: step → guard → log → validate → checkpoint, on a fixed cadence
that every rank follows (Ray requires the same number of reports from each rank).

A recipe supplies three callables; the loop owns nothing else:
- `step_fn(step) -> (stats, tokens)`: one optimizer step; `stats` are 0-dim tensors (not synced),
  `tokens` a host int. Returns `None` stats when the non-finite guard skipped the batch.
- `evaluate_fn(step) -> dict[str, float]`: validation metrics (globally reduced).
- `write_fn(dir, step)`: fills a checkpoint directory with this rank's shards and state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from wmtp.config.schema import TrainConfig
from wmtp.recipes.interfaces import CheckpointSink
from wmtp.tracking.base import MetricLogger
from wmtp.tracking.phases import timed
from wmtp.training.throughput import ThroughputMeter

StepFn = Callable[[int], tuple[Mapping[str, torch.Tensor] | None, int]]


def due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def to_floats(stats: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """One host sync for all tensor stats."""
    keys = [k for k, v in stats.items() if isinstance(v, torch.Tensor)]
    values = torch.stack([stats[k].detach().double().cpu() for k in keys]).tolist() if keys else []
    out = dict(zip(keys, values))
    out.update({k: float(v) for k, v in stats.items() if not isinstance(v, torch.Tensor)})
    return out


def run_steps(*, start: int, tcfg: TrainConfig, step_fn: StepFn, evaluate_fn: Callable[[int], dict[str, float]],
              write_fn, sink: CheckpointSink, logger: MetricLogger, meter: ThroughputMeter,
              extra_metrics: Callable[[], dict[str, float]] | None = None) -> dict[str, float]:
    """Steps `start+1 .. tcfg.steps`; returns the last validation metrics (plus the last train stats)."""
    last_val: dict[str, float] = {}
    last_train: dict[str, float] = {}
    meter.start()
    for step in range(start + 1, tcfg.steps + 1):
        stats, tokens = step_fn(step)
        meter.update(tokens)
        if due(step, tcfg.log_every, tcfg.steps):
            # A skipped (non-finite) step still logs the loop's own metrics, e.g. the skip count.
            if stats is not None:
                last_train = to_floats(stats)
            logger.log_metrics({**(last_train if stats is not None else {}), **meter.metrics(),
                                **(extra_metrics() if extra_metrics else {})}, step)
        # Validation at its cadence, and at the pass@1 cadence (`train.eval_generate_every`).
        if due(step, tcfg.eval_every, tcfg.steps) or (tcfg.eval_generate_every and step % tcfg.eval_generate_every == 0):
            with timed("validation"):
                last_val = evaluate_fn(step)
            logger.log_metrics(last_val, step)
        if due(step, tcfg.checkpoint_every, tcfg.steps):
            with timed("checkpoints"):
                sink.save(step, lambda path, step=step: write_fn(path, step),
                          {**last_train, **last_val, "step": float(step)})
    return {**last_train, **last_val}


def train_and_export(recipe, model, value_head: str | None = None) -> dict[str, float]:
    """A recipe's `train()`: the step loop over its `step`/`evaluate`/`state`, then the export of
    `model` (with the recipe's tokenizer) to `<run_dir>/export`."""
    from wmtp.recipes.components import export_model

    with timed("loop"):
        metrics = run_steps(start=recipe.start, tcfg=recipe.cfg.train, step_fn=recipe.step,
                            evaluate_fn=recipe.evaluate, write_fn=recipe.state.write, sink=recipe.sink,
                            logger=recipe.logger, meter=recipe.meter, extra_metrics=recipe.state.metrics)
    with timed("export"):
        export_model(model, recipe.cfg, recipe.layout, recipe.data.tokenizer, value_head=value_head)
    return metrics

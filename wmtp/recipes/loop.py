"""The small pieces every recipe's `train()` loop uses; the loop itself is written out in each
recipe file (step → log → validate → checkpoint, then export).

Every rank runs the same loop, so every rank logs and checkpoints (Ray: reports) the same number
of times. A step returns `(stats, count)`: `stats` are 0-dim tensors, not synced, or None when
the non-finite guard skipped the batch, or `{}` on a step that logs nothing (`log_due`): the
collectives that only feed metrics (global sums for logging, gathers, per-rank values) run on
logging steps alone, as in torchtitan, while those that change training (loss denominators, weight
normalisation, gradient norms, the non-finite guard) run every step. `count` is the step's
`wmtp.training.throughput.count_step` (tokens and trained targets, a device tensor).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from wmtp.config.schema import TrainConfig, WMTPConfig
from wmtp.parallel import reduce
from wmtp.parallel.reduce import DistEnv
from wmtp.recipes.interfaces import CheckpointSink
from wmtp.tracking.base import MetricLogger
from wmtp.training.state import LoopState
from wmtp.weighting.diagnostics import pooled_diagnostics, relative_position


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


def log_step(logger: MetricLogger, step: int, stats: Mapping[str, Tensor] | None, last_train: dict[str, float],
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

"""The seams between a recipe and whatever runs it (one process, or Ray Train workers).

A recipe never imports ray or mlflow. It receives:
- a `MetricLogger` (wmtp.tracking) — where metrics go;
- a `CheckpointSink` — where checkpoints go and where a resumed run finds the last one;
- an `ExperienceScorer` (verifiable / rho1 only) — turns raw batches into scored batches;
- a `RecipeEnv` — where the process sits, the data, the checkpoint reads and the gather whose
  sizes are values: `training_env` when training, stand-ins of the same shapes in the memory trace.

The in-process implementations live in `wmtp/recipes/` and `wmtp/training/`; the Ray ones in
`wmtp/orchestration/`. Both must give the same numbers for the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

from wmtp.checkpoint import CHECKPOINT_FILES, CheckpointReader
from wmtp.config.schema import WMTPConfig
from wmtp.data.streams import RecipeData, load_data
from wmtp.parallel.reduce import DistEnv, gather_cat, process_layout


class CheckpointSink(Protocol):
    """Where checkpoints go.

    `save` is called by EVERY rank with the same cadence (Ray reports from all ranks); `write(dir)`
    fills a fresh local directory (each rank writes its own DCP shards / files there), then the sink
    publishes it (rename into place, or `ray.train.report(checkpoint=...)`).
    """

    def latest(self) -> Path | None:
        """Local directory of the checkpoint to resume from, or None for a fresh run."""
        ...

    def save(self, step: int, write: Callable[[Path], None], metrics: Mapping[str, float]) -> None: ...


@dataclass
class ScoredBatch:
    """A raw batch plus what the experience phase computed for it (all detached, CPU or device).

    values_old: `[B, S]` critic snapshot values V_old (verifiable).
    advantages / returns: `[B, S]` GAE advantages A_j and value targets G_j on response tokens.
    ref_losses: `[B, S]` reference per-token losses ℓ^ref(j), target-indexed (rho1).
    critic_version: version of the critic snapshot that scored this batch (staleness = learner's
        version − this).
    """

    batch: Any  # wmtp.data.collator.Batch
    values_old: Tensor | None = None
    advantages: Tensor | None = None
    returns: Tensor | None = None
    ref_losses: Tensor | None = None
    critic_version: int = 0
    stats: dict[str, float] = field(default_factory=dict)


# The tensors an experience phase adds to a batch (what travels back from an actor, and what a
# checkpoint keeps of a batch scored ahead of the learner).
SCORED_FIELDS = ("values_old", "advantages", "returns", "ref_losses")


class ExperienceScorer(Protocol):
    """Scores raw batches (no grad). `colocated` scores in the learner; `async` in Ray actors.

    The learner owns the data order: it `submit`s batches in order and `get`s scored batches back
    in the same order, up to `queue_depth` ahead. Weight normalisation that needs global batch
    statistics (zscore over all ranks, Rho-1 top-k) happens in the learner, not here.

    `in_flight()` / `resume_in_flight(scored)` let a checkpoint keep the batches submitted but not
    yet got, as they were scored (by the critic version of their submit), and a resumed run put
    them back in the queue unchanged: rescoring them with the restored critic would differ from
    the uninterrupted run.
    """

    def submit(self, batch: Any) -> None: ...

    def get(self) -> ScoredBatch: ...

    def in_flight(self) -> list[ScoredBatch]:
        """The submitted, not yet got batches, scored (waits for them), oldest first; `get`
        still returns them."""
        ...

    def resume_in_flight(self, scored: ScoredBatch) -> None:
        """Queue an already scored batch (from `in_flight` of the checkpointed run) as if it had
        been submitted and scored: the next `get` returns it."""
        ...

    def publish_critic(self, model: nn.Module, version: int) -> None:
        """The learner's critic (or Rho-1's reference) at `version`, every rank calling."""
        ...

    def close(self) -> None: ...


# What a recipe gets as `scorer_factory` (None: it scores in the learner): (its
# `wmtp.recipes.experience.ExperienceSpec`, the critic's state dict to start from or None) → scorer.
# The Ray one is `wmtp.orchestration.experience.async_scorer_factory`'s.
ScorerFactory = Callable[[Any, Mapping[str, Tensor] | None], ExperienceScorer]


@dataclass(frozen=True)
class RecipeEnv:
    """What a recipe's setup and steps take from whatever runs them, besides the logger, sink and
    scorer: the parts the memory trace (`wmtp.trace`) replaces, passed in rather than patched.

    layout: this process's rank, world size and device (`DistEnv.gpu_policies` in the trace).
    load_data: `cfg` → tokenizer, train and validation data (the trace's are full-length batches).
    checkpoints: how model folders are read (the trace reads shapes only).
    gather_cat: `(x [N_r], layout)` → every rank's values `[Σ_r N_r]` (sizes exchanged first: the
        trace's fake process group carries no values, so it takes every N_r to be this rank's).
    """

    layout: DistEnv
    load_data: Callable[[WMTPConfig], RecipeData]
    checkpoints: CheckpointReader
    gather_cat: Callable[[Tensor, DistEnv], Tensor]


def training_env(cfg: WMTPConfig) -> RecipeEnv:
    """The environment of a training run (one process, gloo tests, Ray Train workers)."""
    return RecipeEnv(process_layout(cfg.orchestration.use_gpu), load_data, CHECKPOINT_FILES, gather_cat)

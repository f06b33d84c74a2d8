"""What a resumed run needs besides the config (`LoopState`: models, optimisers, schedulers,
sampler position, RNG, guard, meter, stateful parts) in one DCP checkpoint format for 1 or N
ranks, how a run starts or resumes, and the loop's own meters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from wmtp.config.schema import WMTPConfig
from wmtp.parallel.reduce import DistEnv, global_sum
from wmtp.training.step import Trainable

if TYPE_CHECKING:
    from wmtp.model.transformer import Transformer
    from wmtp.model.value import ValueModel


def nonfinite_guard(cfg: WMTPConfig, sink):
    """The non-finite loss policy (`train.nonfinite`), naming the sink's last checkpoint."""
    from wmtp.training.nonfinite import NonFiniteGuard

    return NonFiniteGuard(cfg.train.nonfinite, cfg.train.max_skipped_batches, sink.latest,
                          cfg.train.max_consecutive_skipped)


def resume_or_start(state: LoopState, cfg: WMTPConfig, sink, logger, layout: DistEnv) -> int:
    """Seed this rank, then restore the sink's latest checkpoint (returns its step) or, for a
    fresh run, log the resolved config as params (returns 0)."""
    from wmtp.training.seeding import seed_everything

    seed_everything(cfg.run.seed + layout.rank)
    if (ckpt := resumable_checkpoint(sink)) is not None:
        return state.restore(ckpt)
    from wmtp.config.loader import flatten_config

    logger.log_params(flatten_config(cfg))
    return 0


def resumable_checkpoint(sink) -> Path | None:
    """The newest checkpoint of `sink` that verifies on every rank (a damaged one is named in a
    warning and skipped; none usable: CheckpointDamaged, exit 2). The sink then resumes from it."""
    from wmtp.checkpoint import first_good_checkpoint

    candidates = sink.candidates() if hasattr(sink, "candidates") else [p for p in [sink.latest()] if p is not None]
    chosen = first_good_checkpoint(candidates)
    if chosen is not None and hasattr(sink, "resume_from"):
        sink.resume_from(chosen)
    return chosen


@dataclass
class LoopState:
    """Everything a resumed run needs besides the config: models + optimisers (DCP shards),
    schedulers, sampler position, RNG, non-finite guard, throughput meter and any extra stateful
    parts (e.g. the EMA normaliser). One checkpoint format for 1 or N ranks."""

    stream: Any
    guard: Any
    meter: Any
    trainables: dict[str, Trainable]
    stateful: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Models checkpointed without an optimizer (e.g. the critic snapshot of critic_sync_interval > 1).
    models: Mapping[str, nn.Module] = dataclasses.field(default_factory=dict)

    def all_models(self) -> dict[str, nn.Module]:
        return {**{n: t.model for n, t in self.trainables.items()}, **self.models}

    def write(self, path: Path, step: int) -> None:
        from wmtp.checkpoint import save_sharded
        from wmtp.training.seeding import rng_state

        extra = {"step": step, "sampler": self.stream.state_dict(), "rng": rng_state(),
                 "guard": self.guard.state_dict(), "meter": self.meter.state_dict(),
                 "schedulers": {n: t.scheduler.state_dict() for n, t in self.trainables.items()},
                 "stateful": {n: obj.state_dict() for n, obj in self.stateful.items()}}
        save_sharded(path, self.all_models(), {n: t.optimizer for n, t in self.trainables.items()}, extra)

    def restore(self, path: Path) -> int:
        """Load a checkpoint written by `write`; returns its step."""
        from wmtp.checkpoint import load_sharded
        from wmtp.training.seeding import set_rng_state

        extra = load_sharded(path, self.all_models(), {n: t.optimizer for n, t in self.trainables.items()})
        self.stream.load_state_dict(extra["sampler"])
        self.guard.load_state_dict(extra["guard"])
        self.meter.load_state_dict(extra["meter"])
        for n, t in self.trainables.items():
            t.scheduler.load_state_dict(extra["schedulers"][n])
        for n, obj in self.stateful.items():
            obj.load_state_dict(extra["stateful"][n])
        set_rng_state(extra["rng"])
        return int(extra["step"])

    def settle(self, accepted: bool) -> None:
        """After `optimizer_step`: commit the staged updates of stateful parts (the EMA
        normaliser) when the step was accepted, discard them when the guard skipped it."""
        for obj in self.stateful.values():
            if accepted and hasattr(obj, "commit"):
                obj.commit()
            elif not accepted and hasattr(obj, "discard"):
                obj.discard()

    def metrics(self) -> dict[str, float]:
        """Loop metrics logged every `log_every` steps, skipped steps included."""
        return {"train/skipped_batches": float(self.guard.skipped)}


def throughput_meter(model: Transformer | ValueModel, cfg: WMTPConfig, layout: DistEnv):
    """Tokens, trained targets, their rates and MFU over all ranks (FLOPs per token from the
    model's shapes, peak from the accelerator table)."""
    from wmtp.model.memory import flops_per_token
    from wmtp.training.throughput import ThroughputMeter, current_device_peak_flops

    peak = current_device_peak_flops() if layout.device.type == "cuda" else None
    return ThroughputMeter(flops_per_token=flops_per_token(model.args, cfg.data.max_seq_len), peak_flops=peak,
                           n_devices=layout.world_size,
                           memory=memory_metrics(layout) if layout.device.type == "cuda" else None,
                           sum_ranks=lambda t: global_sum(t.to(layout.device), layout))


def memory_metrics(layout: DistEnv, cuda=None):
    """A callable for the meter: this rank's GPU memory as `perf/gpu_mem_*` (the dashboard gauges,
    tagged by rank, read these) and every rank's as `worker/<r>/perf/gpu_mem_*` (one all_gather: the
    meter's metrics are logged on every rank at the same steps)."""
    from wmtp.parallel.reduce import per_rank_values
    from wmtp.training.device_memory import gpu_memory

    def metrics() -> dict[str, float]:
        mine = {f"perf/{k}": v for k, v in gpu_memory(layout.device, cuda).items()}
        ranks = per_rank_values(mine, layout)
        return {**mine, **{k: float(v) for k, v in ranks.items()}}
    return metrics


def lr_metrics(state: LoopState) -> dict[str, float]:
    """Each trainable's current learning rate as `train/lr_<name>`."""
    return {f"train/lr_{n}": t.scheduler.get_last_lr()[0] for n, t in state.trainables.items()}

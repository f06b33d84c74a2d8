"""Training components shared by every recipe: optimizer, LR schedule, precision, seeding,
non-finite loss policy, throughput (no ray, no mlflow; checkpoints are `wmtp.checkpoint`'s)."""

from wmtp.training.nonfinite import NonFiniteGuard, NonFiniteLossError
from wmtp.training.optim import build_optimizer, param_groups
from wmtp.training.precision import autocast_context
from wmtp.training.schedule import WarmupCosine, build_scheduler
from wmtp.training.seeding import rng_state, seed_everything, set_rng_state
from wmtp.training.throughput import ThroughputMeter, peak_flops

__all__ = [
    "NonFiniteGuard",
    "NonFiniteLossError",
    "ThroughputMeter",
    "WarmupCosine",
    "autocast_context",
    "build_optimizer",
    "build_scheduler",
    "param_groups",
    "peak_flops",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]

"""Custom Ray dashboard metrics (`ray.util.metrics`), exported on each node's Prometheus endpoint.

Each gauge takes the value of the first recipe metric whose key ends with one of its suffixes
(`train/loss` → `wmtp_loss`), so recipes keep their own metric names. Tags: `run` and `rank`.
Prometheus shows them as `ray_wmtp_<name>{rank="0",run="..."}`; see docs/DASHBOARD.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ray.util import metrics as ray_metrics

TAG_KEYS = ("run", "rank")

# gauge name -> (description, metric-key suffixes it reads, first match wins)
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "tokens_per_s": ("Training tokens per second on this rank.", ("tokens_per_s",)),
    "mfu": ("Model FLOPs utilisation on this rank (0..1).", ("mfu",)),
    "loss": ("Training loss (globally reduced).", ("train/loss", "loss")),
    "weight_mean": ("Mean token weight over valid tokens.", ("weight_mean", "weights/mean", "weight/mean")),
    "weight_std": ("Std of token weights over valid tokens.", ("weight_std", "weights/std", "weight/std")),
    "value_clip_fraction": ("Fraction of value-loss terms clipped.", ("value_clip_fraction", "clip_fraction")),
    "critic_staleness": ("Critic versions the scored batch lags the learner.", ("critic_staleness",)),
    "experience_queue_depth": ("Scored batches waiting for the learner.", ("experience_queue_depth",)),
    # GPU memory of this rank (GiB; CUDA runs only: wmtp.training.device_memory)
    "gpu_mem_allocated_gib": ("GPU memory held by live tensors on this rank (GiB).", ("gpu_mem_allocated_gib",)),
    "gpu_mem_reserved_gib": ("GPU memory reserved by the caching allocator on this rank (GiB).",
                             ("gpu_mem_reserved_gib",)),
    "gpu_mem_peak_gib": ("Peak GPU memory allocated on this rank since the start (GiB).", ("gpu_mem_peak_gib",)),
}

# counter name -> description (Prometheus adds `_total`)
COUNTERS: dict[str, str] = {"steps": "Logged optimizer steps."}
# The Grafana dashboard of these metrics (docs/DASHBOARD.md): a test checks it names exactly them.
GRAFANA_DASHBOARD = "cluster/grafana/wmtp_dashboard.json"


def prometheus_names() -> set[str]:
    """The names Prometheus scrapes for wmtp's metrics (Ray's `ray_` prefix, counters' `_total`)."""
    return {f"ray_wmtp_{name}" for name in GAUGES} | {f"ray_wmtp_{name}_total" for name in COUNTERS}


class DashboardMetrics:
    """Gauges plus a step counter, tagged with this worker's run and rank."""

    def __init__(self, run: str, rank: int) -> None:
        self._tags = {"run": run, "rank": str(rank)}
        self._gauges = {
            name: ray_metrics.Gauge(f"wmtp_{name}", description=desc, tag_keys=TAG_KEYS)
            for name, (desc, _) in GAUGES.items()
        }
        self._steps = ray_metrics.Counter("wmtp_steps", description=COUNTERS["steps"], tag_keys=TAG_KEYS)
        self._last_step: int | None = None

    def set_values(self, metrics: Mapping[str, float]) -> None:
        """Set the gauges found in `metrics` (experience actors' staleness and queue depth, too)."""
        for name, (_, suffixes) in GAUGES.items():
            value = _first_match(metrics, suffixes)
            if value is not None:
                self._gauges[name].set(value, tags=self._tags)

    def record(self, metrics: Mapping[str, float], step: int) -> None:
        """Gauges from a step's metrics, and the step counter."""
        self.set_values(metrics)
        if self._last_step is None or step > self._last_step:
            self._steps.inc(step - (self._last_step or 0), tags=self._tags)
            self._last_step = step


def _first_match(metrics: Mapping[str, float], suffixes: tuple[str, ...]) -> float | None:
    """First finite training metric equal to a suffix or ending in `/<suffix>` (validation and
    per-rank values skipped)."""
    for suffix in suffixes:
        for key, value in metrics.items():
            # (per-rank copies `worker/<r>/...` are not the step's value: the gauges carry the rank tag)
            if key.startswith(_VALIDATION_PREFIXES + ("worker/",)) or not isinstance(value, int | float):
                continue
            if (key == suffix or key.endswith("/" + suffix)) and math.isfinite(value):
                return float(value)
    return None


_VALIDATION_PREFIXES = ("val", "eval", "valid")

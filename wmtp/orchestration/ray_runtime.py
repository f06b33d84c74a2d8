"""Connecting to Ray and the environment Ray Train needs (the only place that calls `ray.init`)."""

from __future__ import annotations

import logging
import math
import os

import ray

from wmtp.config.schema import WMTPConfig

# CPUs each experience actor reserves (one critic forward at a time).
EXPERIENCE_ACTOR_CPUS = 1

# Ray Train V2 polls its workers on this interval, and `ray.train.report` waits for the next poll:
# the 2 s default would add up to 2 s per report. The controller and workers inherit these from the
# driver's environment (Ray Train propagates them), so they must be set before the trainer starts.
TRAIN_ENV_DEFAULTS: dict[str, str] = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
}


def apply_train_env() -> None:
    """Set Ray Train's environment defaults where the user has not set them."""
    for key, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def ensure_ray(address: str | None = None, *, local_cpus: float | None = None) -> None:
    """Join `address` (or `RAY_ADDRESS`, or start a fresh local cluster) unless Ray is initialised.

    `ray job submit` sets `RAY_ADDRESS` for the driver; `address="auto"` joins a cluster started
    with `ray start` on this machine. Without either, a fresh local cluster (`address="local"`):
    a bare `ray.init()` would look for a running cluster first and hang on a stale
    `ray_current_cluster` file left by `ray stop`. Tests start their own cluster first.
    local_cpus: logical CPUs of a fresh local cluster, at least this machine's cores; a run asks
    for what its workers and experience actors reserve, so a 2-core laptop still schedules them.
    """
    apply_train_env()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs = {}
    if address == "local" and local_cpus is not None:
        kwargs["num_cpus"] = max(os.cpu_count() or 1, math.ceil(local_cpus))
    # Workers' stdout (Ray Train's per-report echo, every rank's lines, controller notices) reaches
    # the driver only with `--verbose`; otherwise it stays in the Ray session logs and the driver
    # shows wmtp's console (wmtp.orchestration.console).
    verbose = os.environ.get("WMTP_VERBOSE") == "1"
    if not verbose:
        kwargs["logging_level"] = logging.WARNING
    ray.init(address=address, log_to_driver=verbose, runtime_env={"env_vars": dict(_propagated_env())}, **kwargs)


def cpus_needed(cfg: WMTPConfig) -> float:
    """Logical CPUs a run reserves: its learner workers, plus experience actors under async."""
    orch = cfg.orchestration
    needed = orch.num_workers * orch.cpus_per_worker
    if orch.placement == "async":
        needed += orch.num_workers * orch.num_experience_actors * EXPERIENCE_ACTOR_CPUS
    return needed


def _propagated_env() -> dict[str, str]:
    return {key: os.environ[key] for key in TRAIN_ENV_DEFAULTS if key in os.environ}

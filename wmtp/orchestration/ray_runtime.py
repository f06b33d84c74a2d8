"""Connecting to Ray and the environment Ray Train needs (the only place that calls `ray.init`)."""

from __future__ import annotations

import os

import ray

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


def ensure_ray(address: str | None = None) -> None:
    """Join `address` (or `RAY_ADDRESS`, or start a local cluster) unless Ray is already initialised.

    Tests start their own local cluster first; `ray job submit` sets `RAY_ADDRESS` for the driver.
    """
    apply_train_env()
    if ray.is_initialized():
        return
    ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": dict(_propagated_env())})


def _propagated_env() -> dict[str, str]:
    return {key: os.environ[key] for key in TRAIN_ENV_DEFAULTS if key in os.environ}

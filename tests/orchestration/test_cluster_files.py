"""The shipped cluster files parse and say what the docs promise (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.runtime_env import RuntimeEnv

from wmtp.orchestration.ray_runtime import TRAIN_ENV_DEFAULTS

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def test_runtime_env_is_valid_for_ray_and_excludes_runs_and_venv():
    spec = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**spec)  # Ray's own validation of the fields
    assert {"runs/", ".venv/"} <= set(env["excludes"])
    for key, value in TRAIN_ENV_DEFAULTS.items():
        assert spec["env_vars"][key] == value


def test_launcher_and_rayjob_describe_one_4xa100_node():
    launcher = yaml.safe_load((CLUSTER / "a100x4.yaml").read_text())
    node = launcher["available_node_types"][launcher["head_node_type"]]
    assert node["node_config"]["guestAccelerators"][0]["acceleratorCount"] == 4
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and "python -m wmtp train" in job["spec"]["entrypoint"]
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "4"
    runtime = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**runtime)
    assert runtime["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == TRAIN_ENV_DEFAULTS["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]

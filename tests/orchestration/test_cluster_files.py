"""The shipped cluster files parse and say what the docs promise (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.runtime_env import RuntimeEnv

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def _code_only(spec: dict) -> None:
    """A job's runtime_env ships code and plain env vars: no per-job pip/conda/uv environment
    (the cluster provides torch and the dependencies), and no RAY_TRAIN_* that wmtp sets itself."""
    RuntimeEnv(**spec)  # Ray's own validation of the fields
    assert not {"pip", "conda", "uv", "container", "image_uri"} & set(spec)
    assert not [k for k in spec.get("env_vars", {}) if k.startswith("RAY_TRAIN_")]


def test_runtime_env_is_code_only_and_excludes_runs_and_venv():
    spec = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    _code_only(spec)
    assert {"runs/", ".venv/", ".git/"} <= set(spec["excludes"])


def test_launcher_and_rayjob_describe_one_4xa100_node():
    launcher = yaml.safe_load((CLUSTER / "a100x4.yaml").read_text())
    node = launcher["available_node_types"][launcher["head_node_type"]]
    assert node["node_config"]["guestAccelerators"][0]["acceleratorCount"] == 4
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and "python -m wmtp train" in job["spec"]["entrypoint"]
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "4"
    _code_only(yaml.safe_load(job["spec"]["runtimeEnvYAML"]))
    # The image that provides the dependencies is the one cluster/Dockerfile builds.
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"-t {worker['image']} ." in dockerfile
    assert "FROM rayproject/ray:2.60.0-py311-gpu" in dockerfile and "pip install --no-cache-dir /tmp/wmtp" in dockerfile

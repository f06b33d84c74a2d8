"""The shipped cluster files parse, validate against Ray's own schemas, install wmtp with the
versions pyproject.toml declares, and say what the docs promise (no cluster needed)."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from ray.runtime_env import RuntimeEnv

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHERS = ["a100x4.yaml", "a100x4-2node.yaml"]
EVERY_FILE = sorted(p.name for p in CLUSTER.iterdir() if p.is_file())


def pyproject_requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name: Requirement(d) for d in deps}


def rayjob_docs() -> list[dict]:
    return list(yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text()))


def rayjob() -> dict:
    return next(d for d in rayjob_docs() if d["kind"] == "RayJob")


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


def test_every_cluster_file_is_covered():
    """A new file in cluster/ must be added to the checks below (version drift, schema)."""
    assert EVERY_FILE == sorted(["Dockerfile", *LAUNCHERS, "rayjob.yaml", "runtime_env.yaml"])


@pytest.mark.parametrize("name", EVERY_FILE)
def test_versions_have_one_source(name):
    """Every torch a cluster file installs is pyproject's range (a CUDA build of it); the rest
    comes from installing wmtp itself; Ray's version is the same everywhere and in pyproject's range."""
    reqs = pyproject_requirements()
    text = (CLUSTER / name).read_text()
    pip_lines = [ln.strip() for ln in text.splitlines() if "pip install" in ln and not ln.lstrip().startswith("#")]
    for line in pip_lines:
        args = [a for a in shlex.split(line.split("pip install", 1)[1].split("&&")[0]) if not a.startswith("-")]
        args = [a for a in args if not a.startswith("https://")]  # --index-url's value
        for arg in args:
            if arg.startswith(("/", "~", ".")):
                continue  # a checkout of wmtp: pyproject's own ranges
            req = Requirement(arg)
            assert req.name == "torch", f"{name}: installs {arg} outside pyproject.toml: {line}"
            assert str(req.specifier) == str(reqs["torch"].specifier), (
                f"{name}: torch {req.specifier} differs from pyproject.toml's {reqs['torch'].specifier}")
            assert "--index-url https://download.pytorch.org/whl/cu" in line, f"{name}: not a CUDA build: {line}"
    if name in ("Dockerfile", *LAUNCHERS):
        assert any(re.search(r"pip install [-\w ]*(/tmp/wmtp|/home/ray/wmtp)( &&.*)?$", ln) for ln in pip_lines), (
            f"{name}: does not install wmtp (and with it pyproject's dependency ranges)")
    for version in re.findall(r"rayproject/ray:([\d.]+)|rayVersion: \"([\d.]+)\"|wmtp:([\d.]+)-gpu", text):
        v = next(x for x in version if x)
        assert v == "2.60.0" and reqs["ray"].specifier.contains(v), f"{name}: Ray {v}"
    # The installed (CPU) torch satisfies the range too: tests run what the cluster runs.
    import torch

    assert reqs["torch"].specifier.contains(Version(torch.__version__.split("+")[0]))


def test_torch_floor_covers_the_fsdp2_methods_wmtp_calls():
    """FSDPModule methods wmtp.parallel calls arrived in torch 2.8: the floor must not be lower."""
    calls = set(re.findall(r"\.(set_[a-z_]+)\(", "".join(p.read_text() for p in (ROOT / "wmtp/parallel").glob("*.py"))))
    assert {"set_gradient_divide_factor", "set_force_sum_reduction_for_comms"} <= calls
    assert min(s.version for s in pyproject_requirements()["torch"].specifier if s.operator == ">=") == "2.8"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_validates_against_rays_schema_and_sets_up_token_auth(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / name).read_text())
    # What `ray up` does: fill the defaults, then validate with ray/autoscaler/ray-schema.json.
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["file_mounts"]["/home/ray/wmtp"] == "."
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)
    # Ray Train's variables are wmtp's (set in the driver; docs/CLUSTER.md states 0.5 s).
    assert not [c for c in starts if "RAY_TRAIN_" in c]
    for node in config["available_node_types"].values():
        assert node["node_config"]["guestAccelerators"][0] == {"acceleratorType": "nvidia-a100-80gb",
                                                                "acceleratorCount": 4}


def test_docs_name_the_launcher_machine_type_and_health_check_interval():
    docs = (ROOT / "docs/CLUSTER.md").read_text()
    for name in LAUNCHERS:
        config = yaml.safe_load((CLUSTER / name).read_text())
        for node in config["available_node_types"].values():
            assert f"`{node['node_config']['machineType']}`" in docs
    assert "a2-highgpu-4g`)" not in docs.split("## A100 40GB")[0]
    from wmtp.orchestration.ray_runtime import TRAIN_ENV_DEFAULTS

    assert f"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S={TRAIN_ENV_DEFAULTS['RAY_TRAIN_HEALTH_CHECK_INTERVAL_S']}" in docs


def test_rayjob_starts_with_rays_flags_keeps_its_outputs_and_uses_a_token():
    from ray.scripts.scripts import start

    job = rayjob()
    assert job["kind"] == "RayJob" and "python -m wmtp train" in job["spec"]["entrypoint"]
    cluster = job["spec"]["rayClusterSpec"]
    flags = {p.name for p in start.params}
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        unknown = {k for k in group["rayStartParams"] if k.replace("-", "_") not in flags}
        assert not unknown, f"rayStartParams that `ray start` does not take: {unknown}"
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "4"
    _code_only(yaml.safe_load(job["spec"]["runtimeEnvYAML"]))
    # The entrypoint is a valid wmtp command: its overrides resolve against the schema.
    from wmtp.cli import build_parser
    from wmtp.config.arguments import config_from_args

    argv = shlex.split(job["spec"]["entrypoint"])[3:]
    cfg = config_from_args(build_parser().parse_args(argv))
    assert cfg.tracking.uri.startswith("http") and cfg.tracking.artifact_location.startswith("s3://")
    assert cfg.orchestration.storage_path.startswith("s3://")
    # Every Ray process and the submitter: token auth from the secret; both pods keep WMTP_HOME on the claim.
    claims = {d["metadata"]["name"] for d in rayjob_docs() if d["kind"] == "PersistentVolumeClaim"}
    pods = [cluster["headGroupSpec"]["template"]["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"]]
    for spec in [*pods, job["spec"]["submitterPodTemplate"]["spec"]]:
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "wmtp-ray-token"
    for spec in pods:
        container = spec["containers"][0]
        home = next(e["value"] for e in container["env"] if e["name"] == "WMTP_HOME")
        volume = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == home)
        assert next(v for v in spec["volumes"] if v["name"] == volume)["persistentVolumeClaim"]["claimName"] in claims
    # The image that provides the dependencies is the one cluster/Dockerfile builds.
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"-t {worker['image']} ." in dockerfile
    assert "FROM rayproject/ray:2.60.0-py311-gpu" in dockerfile and "pip install --no-cache-dir /tmp/wmtp" in dockerfile

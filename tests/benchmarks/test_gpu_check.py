"""`bash benchmarks/gpu_check.sh --tiny` runs every section of the GPU check on this CPU with the
only torch and its own requirements importable and numpy (no Ray, MLflow, pydantic, PyYAML), so the script
cannot rot between GPU sessions; its two quoted constants are the docs' figures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
def torch_only_site(into: Path) -> Path:
    """A site folder with torch and what its wheel requires (sympy, jinja2, ...) and nothing else:
    what `pip install torch` puts on the GPU machine. Links, so building it is instant."""
    import importlib.metadata as md

    import torch
    from packaging.requirements import Requirement

    names = ["torch"]
    for req in map(Requirement, md.requires("torch") or []):
        if not req.marker or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    names += ["mpmath", "markupsafe", "numpy"]  # sympy's and jinja2's requirements; numpy: the one wheel gpu_check names
    site_packages = Path(torch.__file__).resolve().parents[1]
    for name in names:
        for f in md.distribution(name).files or []:
            top = str(f).split("/")[0]
            if top.endswith((".dist-info", ".data", ".pth")) or top in ("..", "__pycache__"):
                continue
            link = into / top
            if not link.exists():
                link.symlink_to(site_packages / top)
    return into


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    site = torch_only_site(tmp_path_factory.mktemp("site"))
    # -S: no site-packages (no Ray, MLflow, pydantic, PyYAML); the checkout, torch and numpy only.
    env = {**os.environ, "PYTHON": f"{sys.executable} -S", "PYTHONPATH": f"{ROOT}:{site}", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(["bash", "benchmarks/gpu_check.sh", "--tiny"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_tiny_mode_runs_every_section_without_ray_mlflow_pydantic(tiny_run):
    lines = tiny_run.stdout.strip().splitlines()
    assert tiny_run.returncode == 0, tiny_run.stdout + tiny_run.stderr
    assert lines[-1] == "gpu_check: ok"
    sections = [json.loads(line) for line in lines[:-1]]
    assert [s["section"] for s in sections] == ["device", "parity", "slice", "slice_throughput", "speculative"]
    assert all(s["ok"] for s in sections), sections
    by = {s["section"]: s for s in sections}
    assert by["device"]["device"] == "cpu" and by["device"]["tiny"] is True
    assert by["parity"]["max_abs_diff"]["weights"] == 0.0  # CPU against CPU in tiny mode
    assert len(by["slice_throughput"]["step_s"]) == 2 and by["slice_throughput"]["tokens_per_s_rank0"] > 0
    assert by["speculative"]["implied_speedup"] > 0 and by["speculative"]["heads"] == 4


def test_the_script_refuses_full_shapes_without_a_gpu():
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout.strip().splitlines()[-1] == "gpu_check: failed"
    assert "no CUDA device" in proc.stdout


def test_quoted_figures_are_the_docs():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    memory = (ROOT / "docs/MEMORY.md").read_text()
    row = next(line for line in memory.splitlines() if line.startswith("| verifiable (interval 1) | colocated |"))
    assert f"**{gpu_check.TRACED_VERIFIABLE_A100X4_GIB:.2f}**" in row
    bench = (ROOT / "docs/BENCHMARKS.md").read_text()
    assert re.search(rf"{gpu_check.MICRO_ACCEPTANCE:.2f} of 3 drafts are accepted per step", " ".join(bench.split()))

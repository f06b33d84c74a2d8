"""Every benchmark script runs end to end in a tiny configuration and ends with `name: value`.

The figures themselves live in docs/BENCHMARKS.md (measured, not asserted); this only keeps the
scripts working. Peers that are not installed make a script print `skipped: <why>` and go on.
The Ray-backed scripts start a local cluster each and are marked slow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(r"^[a-z][a-z0-9_]*: (nan|[-+]?\d+(\.\d+)?([eE][-+]?\d+)?)$")

TINY = {
    "gae": ["--batches", "2", "--seq", "64", "--repeats", "2"],
    # Cut Cross-Entropy's torch_compile path is left out here: inductor compiles it in every
    # process (minutes on a loaded 2-core box); `python benchmarks/mtp_ce.py` runs it.
    "mtp_ce": ["--batch", "1", "--seq", "32", "--dim", "32", "--vocab", "512", "--repeats", "2",
               "--memory-repeats", "1", "--methods", "wmtp", "naive_loop", "torchtune"],
    "mtp_memory": ["--dim", "64", "--layers", "4", "--batch", "1", "--seq", "32", "--vocab", "512",
                   "--repeats", "1"],
    "data_memory": ["--records", "2000", "--repeats", "1"],
    "sandbox": ["--problems", "2", "--repeats", "1"],
    "decode": ["--train-steps", "2", "--batch-size", "2", "--seq-len", "32", "--prompts", "2",
               "--max-new-tokens", "6", "--repeats", "2", "--threads", "1"],
    "data_learnability": ["--steps", "2", "--log-every", "1", "--eval-problems", "2"],
    "trace_check": ["--device", "cpu", "--recipe", "baseline", "model.params.dim=64", "model.params.n_layers=5",
                    "model.params.n_heads=4", "model.params.n_kv_heads=4", "data.max_seq_len=32"],
}
RAY_TINY = {
    "ray_overhead": ["--steps", "4", "--warmup", "1", "--rounds", "1", "--batch-size", "4"],
    "experience_overlap": ["--steps", "4", "--warmup", "1", "--rounds", "1", "--batch-size", "4",
                           "--configs", "baseline", "verifiable_async_frozen"],
}

# Whole-recipe or 1B-shape runs: minutes even tiny, so slow (they still end with `name: value`).
SLOW_TINY = {
    "publish": ["--repeats", "1"],
    "startup": ["--steps", "2", "--repeats", "1"],
}


def _run(name: str, args: list[str], tmp_path: Path, timeout: int) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines and LAST_LINE.match(lines[-1]), f"{name}: last line {lines[-1:]!r} is not `name: value`"
    return proc.stdout


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_tiny(name, tmp_path):
    out = _run(name, TINY[name], tmp_path, timeout=600)
    if name != "data_learnability":  # the comparison benchmarks state machine and load
        assert "loadavg before" in out and "loadavg after" in out


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("name", sorted(RAY_TINY))
def test_ray_benchmark_runs_tiny(name, tmp_path):
    _run(name, RAY_TINY[name], tmp_path, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_TINY))
def test_slow_benchmark_runs_tiny(name, tmp_path):
    _run(name, SLOW_TINY[name], tmp_path, timeout=1800)


@pytest.mark.slow
def test_startup_times_the_readme_main_job(tmp_path):
    """`python benchmarks/startup.py --main-job` (README): the chained critic and policy stages of
    the main job in a fresh folder, each stage's phases, the process's wall time last."""
    out = _run("startup", ["--main-job", "--steps", "2"], tmp_path, timeout=1800)
    assert "verifiable-local-light-critic: 2 steps" in out and "verifiable-local-light: 2 steps" in out
    assert out.strip().splitlines()[-1].startswith("main_job_s: ")


# Scripts whose tiny mode another test runs (gpu_check: under `python -S` with only its wheels).
COVERED_ELSEWHERE = {"gpu_check": "tests/benchmarks/test_gpu_check.py",
                     "metric_collectives": "tests/recipes/test_metric_collectives.py"}


def test_every_script_is_covered():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(TINY) | set(RAY_TINY) | set(SLOW_TINY) | set(COVERED_ELSEWHERE)
    assert all((ROOT / test).is_file() for test in COVERED_ELSEWHERE.values())

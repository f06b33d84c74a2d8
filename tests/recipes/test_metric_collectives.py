"""Metric-only collectives run on logging steps only (docs/TRACKING.md "What is logged"): on 2
gloo ranks, a step that logs nothing runs only the collectives that change training, a logging
step adds the metric ones, and both ranks run the same ones at every step. The counts come from
`benchmarks/metric_collectives.py` in its tiny configuration (it wraps `torch.distributed` in its
own processes; wmtp is not patched)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What a step that logs nothing still runs, by recipe (all all-reduces; a logging step adds the
# metrics' sums, the weight diagnostics' and per-rank gathers, and the meter's count sum).
TRAINING = {
    # the value loss's denominator, the gradient sum, the non-finite guard's loss + norm
    "critic": {"all_reduce": 3},
    # N_k, the value loss's denominator, the z-score moments, the renormalisation mean, the policy's
    # and the critic's gradient sums, the guard; and 3 that only feed train/weights/* statistics but
    # are computed inside weighting.weights.exp_clip_weights (clip fraction, the stats' sums, min/max)
    "verifiable": {"all_reduce": 10},
}


def collectives_per_step(recipe: str, tmp_path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path),
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "benchmarks/metric_collectives.py", "--recipe", recipe, "--steps", "3",
                           "data.batch_size=2", "data.max_seq_len=64"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"nonlog_vs_log_step_time: \d+\.\d+", lines[-1]), lines[-1:]
    line = next(ln for ln in lines if ln.startswith("counts: "))
    return json.loads(line.removeprefix("counts: "))


@pytest.mark.distributed
@pytest.mark.parametrize("recipe", sorted(TRAINING))
def test_a_step_that_logs_nothing_runs_only_training_collectives(recipe, tmp_path):
    counts = collectives_per_step(recipe, tmp_path)
    assert counts["every_step_same"] == {"log": True, "nolog": True}  # and the benchmark checked rank 0 == rank 1
    log, nolog = counts["per_step"]["log"], counts["per_step"]["nolog"]
    assert nolog == TRAINING[recipe], nolog
    assert sum(log.values()) > sum(nolog.values()), (log, nolog)

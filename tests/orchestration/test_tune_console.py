"""`wmtp tune` prints like `wmtp train`: one line per trial event and the summary table, not Ray
Tune's status tables (those only with --verbose). A 3-trial ASHA sweep of the toy recipe in a fresh
process (its own local Ray cluster), everything it writes to stdout and stderr counted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests.recipes.harness import REPO

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tests.orchestration.helpers import short_config
    from tests.orchestration.toy_recipe import ToyRecipeBuilder
    from wmtp.config.tune import TuneSpace
    from wmtp.orchestration.tune import run_tune

    tmp = Path(sys.argv[1])
    cfg = short_config(tmp, "console", steps=8, workers=1)
    space = TuneSpace.model_validate({
        "metric": "val/ce", "mode": "min", "num_samples": 3, "max_concurrent_trials": 1,
        "scheduler": {"type": "asha", "max_t": 20, "grace_period": 2, "reduction_factor": 2},
        "fixed": {"train.eval_every": 2},
        "space": {"optim.lr": {"type": "choice", "values": [0.0001, 0.0003, 0.2]}},
    })
    print(run_tune(cfg, space, recipe_builder=ToyRecipeBuilder(str(tmp / "rec"))).format())

    # docs/DASHBOARD.md "A healthy sweep's failed tasks": its two commands, on this sweep's cluster.
    import subprocess
    import ray
    address = ["--address", ray.get_runtime_context().gcs_address]
    for name, args in {"failed.json": ["list", "tasks", "--filter", "state=FAILED", "--detail", "--limit", "10000",
                                       "--format", "json"], "summary.txt": ["summary", "tasks"]}.items():
        out = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args, *address], capture_output=True,
                             text=True, timeout=120)
        (tmp / name).write_text(out.stdout + out.stderr)
""")
# What docs/DASHBOARD.md says a healthy sweep's failed tasks are: Tune's report-queue polls, and the
# tasks of Ray Train's actors of a trial ASHA stopped (killed with it).
QUEUE_POLL = ("_QueueActor.get", "TASK_EXECUTION_EXCEPTION")
RAY_TRAIN_ACTORS = {"TrainController", "RayTrainWorker", "PreemptionWatcher", "SynchronizationActor", "DatasetManager",
                    "TrainStateActor", "PlacementGroupCleaner", "_AutoscalingCoordinatorActor"}


def _harmless(name: str, error_type: str) -> bool:
    # Ray Train's actors and a trial's report queue die with the trial (ASHA's stop, or its end)
    killed = error_type in {"ACTOR_DIED", "WORKER_DIED"} and name.split(".")[0] in {*RAY_TRAIN_ACTORS, "_QueueActor"}
    return (name, error_type) == QUEUE_POLL or killed


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_a_three_trial_sweep_prints_at_most_40_lines(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "WMTP_METRICS_PORT": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("WMTP_VERBOSE", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=850)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, "\n".join(lines[-60:])
    assert len(lines) <= 40, "\n".join(lines)
    started = [line for line in lines if re.match(r"\[tune\] trial \d+ started: lr=", line)]
    ended = [line for line in lines if re.match(r"\[tune\] trial \d+ (finished at step 8/8|stopped by ASHA at "
                                                r"iteration \d+ \(step \d/8\)), val/ce ", line)]
    assert len(started) == 3 and len(ended) == 3, "\n".join(lines)
    assert any(re.match(r"\[tune\] trial \d+ step \d/8: val/ce ", line) for line in lines)
    assert not any("Trial status" in line or "TensorBoard" in line for line in lines), "\n".join(lines)
    assert any(line.startswith("best config: ") for line in lines)
    # `ray list tasks --filter state=FAILED --detail --limit 10000` (docs/DASHBOARD.md): only Ray's
    # harmless kinds, the report-queue polls among them; `ray summary tasks` counts them too.
    failed = json.loads((tmp_path / "failed.json").read_text())
    kinds = {(task["name"], task["error_type"]) for task in failed}
    assert all(_harmless(*kind) for kind in kinds) and QUEUE_POLL in kinds, kinds
    assert re.search(r"_QueueActor\.get\s+FAILED: \d+", (tmp_path / "summary.txt").read_text())

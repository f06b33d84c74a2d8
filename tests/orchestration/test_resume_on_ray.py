"""A Ray run resumes after any of its processes dies: `wmtp train` through the CLI (its own local
cluster), SIGKILL of the driver, a learner worker, an experience actor or the whole local cluster
mid-run, then (where the run itself cannot go on) the same command again. The per-step metrics
equal an uninterrupted in-process run of the same config.

Each case costs a few Ray start-ups (about a minute each on 2 busy cores): all are slow tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.recipes.harness import REPO, TINY, recipe_config, run, series, steps_of, subprocess_env

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(2400)]

STEPS = 10
OVERRIDES = (f"train.steps={STEPS}", "train.checkpoint_every=2", "train.eval_every=10", "train.heatmap_samples=0",
             "orchestration.num_workers=1", "orchestration.report_every=1")
# Verifiable, async placement: one experience actor scores the learner's batches (exact at
# interval 1 and queue depth 0, so it equals the in-process colocated run).
ASYNC = ("orchestration.placement=async", "orchestration.num_experience_actors=1", "orchestration.queue_depth=0",
         "stage2.critic_sync_interval=1")


def ray_command(recipe: str, output_dir: Path, *overrides: str) -> list[str]:
    """`python -m wmtp train` on Ray (no --local): the driver starts its own local cluster."""
    tiny = [o for o in TINY if not o.startswith("orchestration.enabled")]
    return [sys.executable, "-m", "wmtp", "train", "--recipe", f"configs/recipe.{recipe}.yaml", "--preset",
            "local-light", *tiny, f"run.output_dir={output_dir}", *overrides]


def descendants(root: int) -> list[int]:
    """Every live process below `root` (Ray's workers are children of the raylet, which is the
    driver's child; they run in sessions of their own, so a process group does not hold them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def matching(pids: list[int], marker: str) -> list[int]:
    """The processes among `pids` whose command line contains `marker`."""
    found = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(pid)
    return found


def kill_tree(root: int) -> None:
    """SIGKILL `root` and everything below it (the run's whole local cluster)."""
    for pid in [root, *descendants(root)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_and_kill(cmd: list[str], checkpoint: Path, target: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
    """Start `cmd` in its own process group; once `checkpoint` exists, SIGKILL `target` ("driver",
    "cluster", or a command-line marker of a Ray process such as "RayTrainWorker"); return how the
    command ended."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not checkpoint.is_dir():
            if proc.poll() is not None:
                raise AssertionError(f"run ended (rc={proc.returncode}) before {checkpoint}:\n{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {checkpoint} after {timeout}s")
            time.sleep(0.05)
        if target == "driver":
            proc.send_signal(signal.SIGKILL)
        elif target == "cluster":
            kill_tree(proc.pid)  # driver, GCS, raylet, workers, actors: the whole local cluster
        else:
            victims = matching(descendants(proc.pid), target)
            assert victims, f"no {target} process below the driver"
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, "", stderr)
    finally:
        leftovers = descendants(proc.pid)
        kill_tree(proc.pid)  # whatever of this run's cluster is left
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def rerun(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=1200)
        return subprocess.CompletedProcess(cmd, proc.returncode, "", stderr)
    finally:
        kill_tree(proc.pid)


@pytest.mark.parametrize("recipe, target, extra, keys", [
    ("baseline", "driver", ("tracking.backends=[jsonl,mlflow]",), ("train/loss", "train/grad_norm")),
    ("baseline", "cluster", (), ("train/loss", "train/grad_norm")),
    ("baseline", "RayTrainWorker", ("orchestration.max_failures=1",), ("train/loss", "train/grad_norm")),
    ("verifiable", "ExperienceActor", ASYNC, ("train/loss", "train/value_loss", "train/weights/mean")),
])
def test_a_killed_process_then_the_same_command_resumes_exactly(recipe, target, extra, keys, tmp_path):
    reference = run(recipe_config(recipe, tmp_path / "straight", *OVERRIDES, "train.heatmap_samples=0"))
    out = tmp_path / "killed"
    cmd = ray_command(recipe, out, *OVERRIDES, *extra)
    name = f"{recipe}-local-light"
    first = run_and_kill(cmd, out / "ray" / name / "checkpoint_step00000004", target)
    run_directory = out / name
    if target in ("driver", "cluster"):
        assert first.returncode != 0
        assert max(steps_of(run_directory, "train/loss")) < STEPS, "the run finished before the kill"
        done = rerun(cmd)
        assert done.returncode == 0, done.stderr[-4000:]
        if target == "driver":
            assert_killed_attempt_continued(run_directory)
    else:  # the run recovers by itself: Ray restarts the worker group / the actor
        assert first.returncode == 0, first.stderr[-4000:]
    assert steps_of(run_directory, "train/loss") == list(range(1, STEPS + 1))
    for key in keys:
        assert series(run_directory, key) == pytest.approx(series(reference, key), rel=1e-6, abs=1e-9), key


def assert_killed_attempt_continued(run_directory: Path) -> None:
    """The SIGKILLed driver left its MLflow run RUNNING; the rerun took over its stale lock, ended
    that attempt KILLED with the reason, and continued the same run to FINISHED."""
    import json

    from mlflow.tracking import MlflowClient

    record = json.loads((run_directory / "mlflow_run.json").read_text())
    run = MlflowClient(record["tracking_uri"]).get_run(record["run_id"])
    assert run.info.status == "FINISHED" and "wmtp.status_reason" not in run.data.tags, run.data.tags
    assert run.data.tags["wmtp.previous_attempts"].startswith("KILLED: driver died: stale lock of pid"), run.data.tags

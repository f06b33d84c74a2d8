"""Kill-and-resume: SIGKILL a `wmtp train --local` run after a checkpoint, rerun the same command,
and the per-step losses after the resume equal those of an uninterrupted run (CPU, exact)."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.recipes.harness import REPO, cli_command, recipe_config, run, series, steps_of, subprocess_env

STEPS = 12
RESUME = (f"train.steps={STEPS}", "train.checkpoint_every=2", "train.eval_every=6")


def kill_after_checkpoint(cmd: list[str], checkpoints, step: int, timeout: float = 300.0) -> None:
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        # The folder appears by rename before `latest` names it: wait for the marker.
        marker = checkpoints / "latest"
        while not (marker.is_file() and marker.read_text().strip() == f"step_{step:06d}"):
            if proc.poll() is not None:
                raise AssertionError(f"run ended (rc={proc.returncode}) before its step-{step} checkpoint:\n"
                                     f"{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no step-{step} checkpoint after {timeout}s")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:  # also when no checkpoint came in time: never wait for the whole run
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("recipe, keys", [
    ("baseline", ("train/loss", "train/grad_norm", "val/ce")),
    ("verifiable", ("train/loss", "train/value_loss", "train/weights/mean", "val/critic_auc")),
])
def test_sigkill_then_rerun_matches_an_uninterrupted_run(recipe, keys, tmp_path):
    # verifiable with the EMA normaliser: its running statistics are part of the checkpoint.
    extra = ("stage2.value_weighting.td_error_normalization=ema", "stage2.value_weighting.ema_warmup_steps=2") \
        if recipe == "verifiable" else ()
    reference = run(recipe_config(recipe, tmp_path / "straight", *RESUME, *extra))

    out = tmp_path / "killed"
    cmd = cli_command(recipe, out, *RESUME, *extra)
    run_directory = out / f"{recipe}-local-light"
    kill_after_checkpoint(cmd, run_directory / "checkpoints", 4)
    killed_at = max(steps_of(run_directory, "train/loss"))
    assert killed_at < STEPS, "the run finished before it was killed: nothing was resumed"

    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert steps_of(run_directory, "train/loss") == list(range(1, STEPS + 1))
    for key in keys:
        assert series(run_directory, key) == pytest.approx(series(reference, key), rel=1e-6, abs=1e-9), key


@pytest.fixture(scope="module")
def straight_baseline(tmp_path_factory):
    """The uninterrupted 12-step baseline run the kill tests below compare with."""
    return run(recipe_config("baseline", tmp_path_factory.mktemp("straight"), *RESUME))


def test_a_damaged_latest_checkpoint_is_named_skipped_and_the_previous_one_resumes(straight_baseline, tmp_path):
    out = tmp_path / "damaged"
    cmd = cli_command("baseline", out, *RESUME)
    run_directory = out / "baseline-local-light"
    checkpoints = run_directory / "checkpoints"
    kill_after_checkpoint(cmd, checkpoints, 4)
    latest = checkpoints / (checkpoints / "latest").read_text().strip()
    shard = latest / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated, as by a full disk

    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"checkpoint {latest} is damaged" in done.stderr and str(shard) in done.stderr, done.stderr[-3000:]
    # The SIGKILLed driver's lock was stale: taken over with a warning.
    assert "taking over the stale lock" in done.stderr, done.stderr[-3000:]
    assert (checkpoints / f".damaged-{latest.name}").is_dir()  # kept aside for inspection
    assert series(run_directory, "train/loss") == pytest.approx(series(straight_baseline, "train/loss"),
                                                                rel=1e-6, abs=1e-9)

    # Every checkpoint damaged: exit 2, naming each folder, no traceback.
    for folder in checkpoints.glob("step_*"):
        (folder / "__0_0.distcp").write_bytes(b"")
    failed = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "no usable checkpoint" in failed.stderr and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert all(str(folder) in failed.stderr for folder in checkpoints.glob("step_*")), failed.stderr[-3000:]


def test_a_second_start_of_a_running_run_exits_2_naming_the_holder(tmp_path):
    import json
    import socket
    import sys

    from wmtp.training.runlock import _process_start

    run_directory = tmp_path / "baseline-local-light"
    run_directory.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = {"host": socket.gethostname(), "pid": holder.pid, "pid_start": _process_start(holder.pid),
                "started": "2026-01-01T00:00:00Z"}
        (run_directory / "run.lock").write_text(json.dumps(lock))
        (run_directory / "config.yaml").write_text("the running run's config\n")
        done = subprocess.run(cli_command("baseline", tmp_path), cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"held by pid {holder.pid} on host {socket.gethostname()}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # The running run's files are left alone.
    assert (run_directory / "config.yaml").read_text() == "the running run's config\n"
    assert not (run_directory / "metrics.jsonl").exists()


def test_the_rerun_ends_a_sigkilled_drivers_mlflow_run_killed_and_continues_it(tmp_path):
    """SIGKILL leaves the MLflow run RUNNING (nothing could end it); the rerun of the same command
    takes over the stale lock, ends that attempt KILLED with "driver died: stale lock of pid N
    taken over", then continues the run: FINISHED at the end, the dead attempt in
    `wmtp.previous_attempts`, no stale reason tag."""
    import json

    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    cmd = cli_command("baseline", out, "train.steps=6", "train.checkpoint_every=2", "train.eval_every=6",
                      "tracking.backends=[jsonl,mlflow]")
    run_directory = out / "baseline-local-light"
    kill_after_checkpoint(cmd, run_directory / "checkpoints", 2)
    dead_pid = json.loads((run_directory / "run.lock").read_text())["pid"]
    record = json.loads((run_directory / "mlflow_run.json").read_text())
    client = MlflowClient(record["tracking_uri"])
    assert client.get_run(record["run_id"]).info.status == "RUNNING"  # what the kill leaves

    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run_directory / "mlflow_run.json").read_text())["run_id"] == record["run_id"]
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and "wmtp.status_reason" not in run.data.tags
    assert run.data.tags["wmtp.previous_attempts"].startswith(
        f"KILLED: driver died: stale lock of pid {dead_pid} taken over"), run.data.tags
    assert [m.step for m in sorted(client.get_metric_history(record["run_id"], "train/loss"),
                                   key=lambda m: m.step)][-1] == 6

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


def kill_after_checkpoint(cmd: list[str], checkpoints, step: int, timeout: float = 120.0) -> None:
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not (checkpoints / f"step_{step:06d}").is_dir():
            if proc.poll() is not None:
                raise AssertionError(f"run ended (rc={proc.returncode}) before its step-{step} checkpoint:\n"
                                     f"{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no step-{step} checkpoint after {timeout}s")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
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

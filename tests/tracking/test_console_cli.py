"""The README's main command through the CLI: a quiet console (line budget, no Ray echoes, no
placeholders), ending with the summary block; summary.json and the MLflow run agree with it.

`--local` runs in CI; the Ray path starts its own cluster from the CLI (minutes on 2 busy cores)
and is marked slow. Both check the same things: the console is one console.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.recipes.harness import REPO, subprocess_env

# The README's main command, made short: 4 steps per stage, validation at 2 and 4.
README_MAIN = ["train", "--recipe", "configs/recipe.verifiable.yaml", "--preset", "local-light"]
SHORT = ["data.synth_problems=200", "data.batch_size=4", "data.max_seq_len=96", "train.steps=4",
         "train.log_every=2", "train.eval_every=2", "train.checkpoint_every=4", "train.eval_batches=1",
         "train.heatmap_samples=2", "optim.warmup_steps=2"]
LINE_BUDGET = 40
RAY_NOISE = ("Reporting training result", "repeated", "PreemptionWatcher", "TrainController", "RayTrainWorker",
             "-inf", "Traceback")


def _run_cli(tmp_path, *flags: str) -> tuple[list[str], str]:
    out_dir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "wmtp", *README_MAIN, *flags, *SHORT, f"run.output_dir={out_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.splitlines() + proc.stderr.splitlines(), str(out_dir)


def _check_console_and_summary(lines: list[str], out_dir: str, path: str) -> None:
    text = "\n".join(lines)
    assert len(lines) <= LINE_BUDGET, text
    for noise in RAY_NOISE:
        assert noise not in text, (noise, text)
    # Progress and validation lines of both stages; validation printed at a step that also logs.
    for stage in ("verifiable-local-light-critic", "verifiable-local-light"):
        assert f"[{stage}] step 4/4" in text
        assert f"[{stage}] validation @ step 2: " in text and f"[{stage}] validation @ step 4: " in text
    assert "== verifiable-local-light-critic: FINISHED at step 4/4" in text  # the producer's one line
    # The run ends with the summary block, whose last line is the command to resume.
    start = next(i for i, ln in enumerate(lines) if ln.startswith("== verifiable-local-light: FINISHED"))
    block = lines[start:]
    assert block[-1].startswith("  wmtp train --recipe configs/recipe.verifiable.yaml --preset local-light")
    assert any(ln.startswith("time      ") and "steps" in ln and "export" in ln for ln in block)
    assert any(ln.startswith("final     train/loss ") and "val/ce" in ln for ln in block)
    assert any(ln.startswith("  wmtp eval --checkpoint ") for ln in block)
    assert any(ln.startswith("  mlflow ui --backend-store-uri sqlite:///") for ln in block)

    summary = json.loads(Path(out_dir, "verifiable-local-light", "summary.json").read_text())
    assert summary["status"] == "FINISHED" and summary["step"] == 4 and summary["reason"] is None
    assert {"setup", "steps", "validation", "checkpoints", "export"} <= set(summary["phases_s"])
    if path == "ray":
        assert {"worker_start", "shutdown"} <= set(summary["phases_s"])
    assert summary["best"]["metric"] == "val/ce" and "val/critic_auc" in summary["final"]
    assert summary["paths"]["export"].endswith("verifiable-local-light/export")
    assert summary["paths"]["checkpoint"] is not None

    from mlflow.tracking import MlflowClient

    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    run = client.get_run(summary["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["wmtp.recipe"] == "verifiable" and run.data.tags["wmtp.preset"] == "local-light"
    assert run.data.tags["wmtp.path"] == path and run.data.params["run.name"] == "verifiable-local-light"
    assert "summary.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_readme_main_command_local_is_quiet_and_ends_with_the_summary(tmp_path):
    lines, out_dir = _run_cli(tmp_path, "--local")
    _check_console_and_summary(lines, out_dir, "local")


@pytest.mark.slow
@pytest.mark.ray
def test_readme_main_command_on_ray_is_quiet_and_ends_with_the_summary(tmp_path):
    lines, out_dir = _run_cli(tmp_path, "orchestration.num_workers=2")
    # The Ray path adds the cluster's own start-up notices on the driver (token auth): allow them.
    lines = [ln for ln in lines if "authentication" not in ln]
    _check_console_and_summary(lines, out_dir, "ray")


def _mlflow_run(summary: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(summary["mlflow"]["tracking_uri"]).get_run(summary["mlflow"]["run_id"])


def test_sigterm_marks_the_run_killed_and_ends_with_the_summary(tmp_path):
    """`ray job stop` / `kill` send SIGTERM: KILLED with the reason, exit 130, summary naming the
    last good checkpoint (in-process here; the Ray driver takes the same path)."""
    import signal
    import time

    from tests.recipes.harness import cli_command

    out = tmp_path / "out"
    cmd = cli_command("baseline", out, "train.steps=400", "train.checkpoint_every=2", "train.eval_every=400",
                      "tracking.backends=[stdout,jsonl,mlflow]")
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    ckpt = out / "baseline-local-light" / "checkpoints" / "step_000002"
    deadline = time.monotonic() + 300
    while not ckpt.is_dir():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    summary = json.loads((out / "baseline-local-light" / "summary.json").read_text())
    assert summary["status"] == "KILLED" and "SIGTERM" in summary["reason"]
    assert summary["paths"]["checkpoint"] is not None and "/checkpoints/step_" in summary["paths"]["checkpoint"]
    lines = stdout.strip().splitlines()
    assert any(ln.startswith("== baseline-local-light: KILLED at step ") for ln in lines)
    assert any(ln.startswith("last good checkpoint ") for ln in lines)
    assert lines[-1].endswith("# resume")
    run = _mlflow_run(summary)
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["wmtp.status_reason"]


def test_a_failing_run_is_marked_failed_with_the_reason(tmp_path):
    """A non-finite loss with train.nonfinite=stop: FAILED (never FINISHED) with the reason; it is
    the user's to fix, so exit 2 and one `wmtp: error:` line after the block, no traceback."""
    from tests.recipes.harness import cli_command

    out = tmp_path / "out"
    cmd = cli_command("baseline", out, "optim.lr=1e12", "optim.grad_clip=null", "train.steps=3",
                      "tracking.backends=[stdout,jsonl,mlflow]")
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    summary_path = out / "baseline-local-light" / "summary.json"
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "FAILED" and summary["reason"].startswith("NonFiniteLossError")
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("wmtp: error: non-finite loss"), proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].endswith("# resume")
    assert "FAILED at step 1/3" in proc.stdout and "last good checkpoint -" in proc.stdout
    run = _mlflow_run(summary)
    assert run.info.status == "FAILED" and run.data.tags["wmtp.status_reason"].startswith("NonFiniteLossError")

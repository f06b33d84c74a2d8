"""`ray job stop` (SIGTERM) and SIGINT of a submitted wmtp driver, through a real `ray start --head`
cluster: the run ends KILLED in summary.json and MLflow with the signal named, the console shows
the summary and the command that resumes, no traceback; the resubmitted job resumes.

At HEAD `ray.init` turned SIGTERM into `sys.exit(15)` and Ray Train's SIGINT handler aborted the
controller: both ended the run FAILED (`SystemExit`, Ray's dump). Slow (two jobs on a fresh head,
≈ 3-4 min on a busy 2-core machine)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.orchestration.ray_head import RayHead
from wmtp.orchestration.reporting import checkpoint_dir_step

REPO = Path(__file__).resolve().parents[2]
RUN = "baseline-local-light"
JOB = ["--", "python", "-m", "wmtp", "train", "--recipe", "configs/recipe.baseline.yaml", "--preset", "local-light",
       "train.steps=400", "train.eval_every=400", "train.checkpoint_every=2", "train.log_every=2",
       "train.eval_batches=1", "orchestration.report_every=2", "orchestration.num_workers=1",
       "data.synth_problems=100", "train.export_formats=[]"]


@pytest.fixture
def head(tmp_path):
    h = RayHead(num_cpus=2, wmtp_home=tmp_path / "home")
    try:
        yield h
    finally:
        h.stop()
        h.remove()


def _runtime_env(tmp_path: Path, **env: str) -> Path:
    """cluster/runtime_env.yaml as shipped, plus `env` (e.g. the job supervisor's stop signal)."""
    spec = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    spec["env_vars"] = {**spec.get("env_vars", {}), **env}
    path = tmp_path / f"runtime_env_{len(env)}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _newest_checkpoint_step(root: Path) -> int:
    return max((checkpoint_dir_step(p.name) for p in root.glob("checkpoint_step*")), default=0)


def _submit_and_stop(head: RayHead, job_id: str, runtime_env: Path) -> str:
    """Submit, wait for this job's first checkpoint (the driver is then in fit()), `ray job stop`
    (which waits until the job is stopped)."""
    root = head.wmtp_home / "runs" / "ray" / RUN
    after_step = _newest_checkpoint_step(root)
    head.cli("ray", "job", "submit", "--address", head.address, "--submission-id", job_id, "--no-wait",
             "--runtime-env", str(runtime_env), "--working-dir", ".", *JOB, cwd=REPO)
    deadline = time.monotonic() + 600
    while _newest_checkpoint_step(root) <= after_step:
        if int(time.monotonic()) % 10 == 0:  # `ray job list` costs seconds: not every poll
            assert head.job_status(job_id) in ("PENDING", "RUNNING"), head.cli(
                "ray", "job", "logs", "--address", head.address, job_id).stdout[-4000:]
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.5)
    head.cli("ray", "job", "stop", "--address", head.address, job_id, timeout=120)
    assert head.job_status(job_id) == "STOPPED"
    logs = head.cli("ray", "job", "logs", "--address", head.address, job_id)
    return logs.stdout + logs.stderr


def _mlflow_run(head: RayHead):
    from mlflow.tracking import MlflowClient

    runs = head.wmtp_home / "runs"
    record = json.loads((runs / RUN / "mlflow_run.json").read_text())
    return MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}").get_run(record["run_id"])


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1500)
def test_ray_job_stop_and_sigint_end_the_run_killed(head, tmp_path):
    head.start()
    summary_path = head.wmtp_home / "runs" / RUN / "summary.json"
    for job_id, env, signame in (("stop-term", {}, "SIGTERM"), ("stop-int", {"RAY_JOB_STOP_SIGNAL": "SIGINT"}, "SIGINT")):
        logs = _submit_and_stop(head, job_id, _runtime_env(tmp_path, **env))
        summary = json.loads(summary_path.read_text())
        assert summary["status"] == "KILLED" and signame in summary["reason"], (summary, logs[-4000:])
        assert summary["paths"]["checkpoint"] and "checkpoint_step" in summary["paths"]["checkpoint"]
        assert f"{RUN}: KILLED at step" in logs and f"by {signame}" in logs, logs[-4000:]
        assert "# resume" in logs and "Traceback" not in logs and "SystemExit" not in logs, logs[-4000:]
        run = _mlflow_run(head)
        assert run.info.status == "KILLED" and signame in run.data.tags["wmtp.status_reason"], run.data.tags
    # The second job resumed from the first one's checkpoint.
    assert "resuming from" in logs

"""docs/CLUSTER.md section 0, run as written: a real `ray start --head` on 127.0.0.1, `ray job submit`
with the shipped runtime_env, outputs under WMTP_HOME, resume across a cluster restart, a sweep.

Each head has its own --temp-dir, free ports and token file (tests/orchestration/ray_head.py) and
is ended by its process group, never `ray stop` (that would end every Ray cluster on the machine);
the doc's `ray stop` is exercised as that scoped stop. Commands differ from the doc only by the
ports, `--address` where several clusters share the machine, WMTP_HOME=<tmp> for `$PWD`, and
`key=value` overrides for a few steps (FEW_STEPS).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.orchestration.ray_head import RayHead

REPO = Path(__file__).resolve().parents[2]
HEAD_COMMIT = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
DOC = REPO / "docs" / "CLUSTER.md"

FEW_STEPS = ["train.steps=4", "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=2",
             "train.eval_batches=1", "orchestration.report_every=2", "data.synth_problems=200"]

# Section 0 of docs/CLUSTER.md, command by command (continuation lines joined); the test below runs
# each (adapted as the module docstring says) and fails when the doc's list changes.
DRY_RUN = "wmtp train --recipe configs/recipe.verifiable.yaml --preset local-light --dry-run"
ACTIVATE = ". .venv/bin/activate"
AUTH_MODE = "export RAY_AUTH_MODE=token"
TOKEN = "ray get-auth-token --generate"
START = "WMTP_HOME=$PWD ray start --head --num-cpus=4 --num-gpus=0 --metrics-export-port=8080"
STATUS = "ray status"
SUBMIT = ("ray job submit --address http://127.0.0.1:8265 --submission-id verifiable-1 "
          "--metadata-json \"{\\\"job_name\\\": \\\"verifiable-local-light\\\", \\\"git_commit\\\": \\\"$(git rev-parse HEAD)\\\"}\" "
          "--runtime-env cluster/runtime_env.yaml --working-dir . "
          "-- python -m wmtp train --recipe configs/recipe.verifiable.yaml --preset local-light")
LOGS = "ray job logs --address http://127.0.0.1:8265 verifiable-1"
LIST = "ray job list --address http://127.0.0.1:8265"
STOP = "ray stop"
SWEEP = ("ray job submit --address http://127.0.0.1:8265 --submission-id sweep-1 "
         "--metadata-json '{\"job_name\": \"tune-verifiable-local-light\"}' --runtime-env cluster/runtime_env.yaml --working-dir . "
         "-- python -m wmtp tune --recipe configs/recipe.verifiable.yaml --preset local-light "
         "--space tune_spaces/verifiable.yaml --num-samples 4 orchestration.placement=colocated")
SECTION0 = [DRY_RUN, ACTIVATE, AUTH_MODE, TOKEN, START, STATUS, SUBMIT, LOGS, LIST, STOP, SWEEP]
# Inline commands of section 0 (in backticks) that the test runs too.
INLINE = ["curl -s http://127.0.0.1:8080/metrics | grep '^ray_wmtp_'",
          "mlflow ui --backend-store-uri sqlite:///runs/mlflow.db"]


def doc_section0_commands() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## 0."):text.index("\n## ", text.index("## 0.") + 1)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+", " ", line).strip()
            if line:
                commands.append(line)
    return commands


def test_the_test_runs_every_command_of_section0():
    assert doc_section0_commands() == SECTION0
    text = DOC.read_text(encoding="utf-8")
    for inline in INLINE:
        assert f"`{inline}`" in text


def _adapt(command: str, head: RayHead, *extra: str) -> list[str]:
    """A doc command for this head: its dashboard port, `$(git rev-parse HEAD)` as the shell expands
    it, and `extra` overrides after the wmtp args."""
    command = command.replace("$(git rev-parse HEAD)", HEAD_COMMIT)
    args = shlex.split(command.replace("127.0.0.1:8265", f"127.0.0.1:{head.dashboard_port}"))
    return [*args, *extra]


def _submit(head: RayHead, command: str, job_id: str, *extra: str, seen: list[str] | None = None) -> str:
    """Submit and wait; `seen` collects the `ray_wmtp_` lines the metrics endpoint served meanwhile."""
    args = _adapt(command, head, *extra)
    args[args.index("--submission-id") + 1] = job_id
    done = threading.Event()

    def poll() -> None:
        while seen is not None and not done.wait(2.0):
            try:
                seen.extend(line for line in _metrics(head).splitlines() if line.startswith("ray_wmtp_"))
            except OSError:
                pass

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        out = head.cli(*args, cwd=REPO, timeout=1500)
    finally:
        done.set()
        poller.join()
    assert f"Job '{job_id}' succeeded" in re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert head.job_status(job_id) == "SUCCEEDED"
    logs = head.cli(*_adapt(LOGS, head)[:-1], job_id)
    return logs.stdout + logs.stderr


def _metrics(head: RayHead) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{head.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def _no_outputs_in_ray_temp(head: RayHead) -> None:
    """Nothing was written into Ray's temporary copies of the working dir."""
    leaked = [p for p in Path(head.temp_dir).glob("session_*/runtime_resources/working_dir_files/*/runs")]
    assert leaked == []


@pytest.fixture
def head(tmp_path):
    h = RayHead(num_cpus=4, wmtp_home=tmp_path / "home")
    try:
        yield h
    finally:
        h.stop()
        assert h._pids_of_temp_dir() == []
        h.remove()


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.ray
def test_job_submit_with_shipped_runtime_env_writes_under_wmtp_home(head):
    """The shortest real submission: one 2-step baseline job (≈ 3 min on a busy 2-core machine, so
    slow; CI runs the driver-side guard below instead)."""
    head.start()
    command = SUBMIT.replace("recipe.verifiable.yaml", "recipe.baseline.yaml")
    logs = _submit(head, command, "baseline-1", "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
                   "train.eval_batches=1", "orchestration.num_workers=1", "data.synth_problems=100")
    assert "step 2/2" in logs
    runs = head.wmtp_home / "runs"
    assert (runs / "baseline-local-light" / "config.yaml").exists()
    assert (runs / "ray" / "baseline-local-light" / "checkpoint_step00000002").is_dir()
    assert (runs / "mlflow.db").exists()
    _no_outputs_in_ray_temp(head)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    run, = client.search_runs(client.get_experiment_by_name("wmtp").experiment_id)
    assert run.data.tags["mlflow.source.git.commit"] == HEAD_COMMIT  # captured on the submit side
    assert any(k.startswith("train/ce_head2") for k in run.data.metrics)  # local-light: 2 heads


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ≈ 15-25 min on a busy 2-core machine: 4 jobs, 6 TorchTrainer runs
@pytest.mark.ray
def test_local_cluster_walkthrough_submit_restart_resume_and_sweep(head):
    # The dry run names the head this recipe needs.
    plan = head.cli(*shlex.split(DRY_RUN), cwd=REPO).stdout
    assert "ray_start: ray start --head --num-cpus=4 --num-gpus=0" in plan
    assert "needs: 2 workers × 1 CPU + 2 experience actors × 1 CPU = 4 CPU" in plan
    # ACTIVATE and AUTH_MODE: head.env() puts the venv first on PATH and sets RAY_AUTH_MODE=token.
    assert Path(sys.executable).parent.joinpath("ray").exists()
    assert head.env()["RAY_AUTH_MODE"] == "token"
    head.start()
    token = head.cli(*shlex.split(TOKEN)).stdout.strip()
    assert token == head.token_path.read_text().strip()
    assert "4.0 CPU" in head.cli("ray", "status", f"--address=127.0.0.1:{head.gcs_port}").stdout

    seen: list[str] = []  # INLINE curl: the gauges, read while the job runs
    logs = _submit(head, SUBMIT, "verifiable-1", *FEW_STEPS, seen=seen)
    assert any('run="verifiable-local-light"' in line for line in seen), seen[:5]
    assert "running the 'critic' stage first" in logs and "step 4/4" in logs
    runs = head.wmtp_home / "runs"
    assert (runs / "verifiable-local-light-critic" / "export" / "params.json").exists()
    assert (runs / "verifiable-local-light" / "config.yaml").exists()
    assert (runs / "ray" / "verifiable-local-light" / "checkpoint_step00000004").is_dir()
    listed = head.cli(*_adapt(LIST, head)).stdout
    assert "submission_id='verifiable-1'" in listed and "'job_name': 'verifiable-local-light'" in listed
    _no_outputs_in_ray_temp(head)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")  # what `mlflow ui` opens
    experiment = client.get_experiment_by_name("wmtp")
    names = {r.info.run_name: r for r in client.search_runs(experiment.experiment_id)}
    assert names["verifiable-local-light"].info.status == "FINISHED"
    run_id = names["verifiable-local-light"].info.run_id

    # STOP (scoped to this head), a fresh start, the same job again: it resumes, nothing retrained.
    head.stop()
    head.remove()
    head.start()
    logs = _submit(head, SUBMIT, "verifiable-2", *FEW_STEPS)
    assert "reusing critic output" in logs and "running the 'critic' stage first" not in logs
    assert "[verifiable-local-light] resuming from" in logs and "checkpoint_step00000004 (step 4/4)" in logs
    assert "step 2/4" not in logs and "FINISHED at step 4/4" in logs
    again = {r.info.run_name: r for r in client.search_runs(experiment.experiment_id)}
    assert again["verifiable-local-light"].info.run_id == run_id

    # A 4-trial sweep: ASHA stops at least one, best.yaml validates, the same job again resumes.
    sweep_steps = [s.replace("train.steps=4", "train.steps=8") for s in FEW_STEPS]
    logs = _submit(head, SWEEP, "sweep-1", *sweep_steps)
    assert re.search(r"stopped by ASHA at iteration \d+", logs), logs[-4000:]
    assert "val/ce_head1" in logs and "best config:" in logs
    best = runs / "tune-verifiable-local-light" / "best.yaml"
    text = best.read_text()
    assert str(head.wmtp_home) not in text and "tune-verifiable-local-light-" not in text
    plan = head.cli("wmtp", "train", "--config", str(best), "--dry-run", cwd=REPO).stdout
    assert "recipe: verifiable" in plan and "name: verifiable-local-light-best" in plan
    logs = _submit(head, SWEEP, "sweep-2", *sweep_steps)
    assert "resuming sweep tune-verifiable-local-light" in logs and "resumed" in logs
    listed = head.cli(*_adapt(LIST, head)).stdout
    assert all(f"submission_id='{j}'" in listed for j in ("verifiable-2", "sweep-1", "sweep-2"))


@pytest.mark.ray
def test_a_job_driver_joining_the_cluster_keeps_the_jobs_runtime_env(ray_cluster):
    """CI-sized guard of the job-submission path: a driver started the way Ray's job supervisor
    starts one (RAY_JOB_CONFIG_JSON_ENV_VAR with the job's runtime_env and metadata, RAY_ADDRESS)
    joins through ensure_ray without a runtime_env conflict, and the job's env vars win over
    wmtp's defaults."""
    import os
    import subprocess

    job_config = {"runtime_env": {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5",
                                               "RAY_TRAIN_V2_ENABLED": "1"}},
                  "metadata": {"job_name": "from-submit"}}
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address, RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps(job_config),
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="1.5")  # what the job's runtime_env puts in the driver
    code = ("import os, ray\n"
            "from wmtp.orchestration.ray_runtime import ensure_ray\n"
            "ensure_ray(None, job_name='run-name')\n"
            "env = ray.get_runtime_context().runtime_env.get('env_vars', {})\n"
            "print('ENV', env.get('RAY_TRAIN_HEALTH_CHECK_INTERVAL_S'), os.environ['RAY_TRAIN_HEALTH_CHECK_INTERVAL_S'],"
            " os.environ['RAY_TRAIN_ENABLE_STATE_TRACKING'])\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ENV 1.5 1.5 1" in proc.stdout

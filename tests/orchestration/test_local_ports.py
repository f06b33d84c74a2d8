"""Two of wmtp's own local clusters side by side on one machine (docs/CLUSTER.md, "Ports").

A `ray.init` cluster binds the dashboard agent's HTTP server to Ray's fixed 52365; a second one
then starts anyway and `ray job submit` to it fails with "No available agent". wmtp starts its local
heads itself (`start_local_head`, every port free): here two at once, each running a job.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from wmtp.orchestration.ray_runtime import start_local_head

RAY_FIXED_AGENT_PORT = 52365


def _run_job(dashboard: str) -> str:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    job = client.submit_job(entrypoint="python -c \"print('side by side')\"")
    deadline = time.monotonic() + 120
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job} still {status}"
        time.sleep(0.5)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)
    return client.get_job_logs(job)


def _agent_http_port(head) -> int:
    """The port the head's dashboard agent serves HTTP on, as it registers it with the GCS
    (`[ip, http_port, grpc_port]`, Ray's dashboard/agent.py); -1 when it could not bind."""
    from ray._private.ray_constants import KV_NAMESPACE_DASHBOARD
    from ray.dashboard.consts import DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX

    key = f"{DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX}{head.node_id}".encode()
    deadline = time.monotonic() + 60
    while (value := head.get_gcs_client().internal_kv_get(key, KV_NAMESPACE_DASHBOARD)) is None:
        assert time.monotonic() < deadline, "the dashboard agent never registered"
        time.sleep(0.5)
    return json.loads(value)[1]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_two_local_clusters_run_jobs_side_by_side():
    """In a child process: a head started and killed in the test process would end the session's
    own Ray driver (its core worker exits when a GCS it knows of dies)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from tests.orchestration.test_local_ports import side_by_side; "
                           "side_by_side()"], capture_output=True, text=True, timeout=280,
                          cwd=str(Path(__file__).resolve().parents[2]))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("side by side") >= 2, proc.stdout[-2000:]


def side_by_side() -> None:
    heads = []
    temp_dirs = [tempfile.mkdtemp(prefix="rp", dir="/tmp") for _ in range(2)]  # short: Ray's socket paths
    try:
        for temp_dir in temp_dirs:
            heads.append(start_local_head(num_cpus=1, temp_dir=temp_dir))
        dashboards = [f"http://{h.webui_url.removeprefix('http://')}" for h in heads]
        agents = [_agent_http_port(h) for h in heads]
        assert len(set(dashboards)) == 2 and len(set(agents)) == 2, (dashboards, agents)
        assert RAY_FIXED_AGENT_PORT not in agents
        for dashboard in dashboards:  # "No available agent" at HEAD for the second
            logs = _run_job(dashboard)
            assert "side by side" in logs
            print(logs.strip(), flush=True)
    finally:
        for head in heads:
            head.kill_all_processes(check_alive=False, allow_graceful=True)
        for temp_dir in temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)

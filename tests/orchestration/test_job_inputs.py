"""A submitted job with a missing relative input fails on the driver in seconds, before any worker
starts: exit 2, the key, the value and the job's working dir named (a real `ray start --head` and
`ray job submit` of docs/CLUSTER.md's main job, tests/orchestration/ray_head.py)."""

from __future__ import annotations

import re
import time

import pytest

from tests.orchestration.ray_head import RayHead
from tests.orchestration.test_job_submit import REPO, SUBMIT, _adapt


@pytest.fixture
def head(tmp_path):
    h = RayHead(num_cpus=2, wmtp_home=tmp_path / "home")
    try:
        h.start()
        yield h
    finally:
        h.stop()
        h.remove()


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_missing_relative_input_fails_the_job_in_seconds_naming_the_directory(head):
    args = _adapt(SUBMIT, head, "data.train=data/missing.jsonl")
    args[args.index("--submission-id") + 1] = "missing-1"
    t0 = time.monotonic()
    out = head.cli(*args, cwd=REPO, timeout=300, check=False)
    elapsed = time.monotonic() - t0
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert out.returncode != 0 and head.job_status("missing-1") == "FAILED", text[-3000:]
    assert "exit code 2" in text, text[-3000:]
    found = re.search(r"data\.train: 'data/missing\.jsonl' does not exist \(resolved against the job's working dir "
                      r".*?: (\S+)\)", text)
    assert found, text[-3000:]
    assert "runtime_resources/working_dir_files/_ray_pkg_" in found.group(1)
    assert "Traceback" not in text and "WorkerGroupError" not in text
    # Upload + driver start + config: no cluster work (a worker start alone takes longer on 2 cores).
    assert elapsed < 90, elapsed

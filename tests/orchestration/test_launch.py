"""TorchTrainer orchestration with a toy recipe: parity across world sizes, resume, faults, S3."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.orchestration.helpers import by_step, read_losses, short_config
from tests.orchestration.toy_recipe import ToyRecipeBuilder
from wmtp.orchestration.launch import run_training

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, tmp_path_factory) -> dict[int, float]:
    """Per-step losses of a clean 8-step, 2-worker toy run (the reference for resume and kill tests)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run_training(short_config(tmp, "uninterrupted", steps=8), recipe_builder=ToyRecipeBuilder(str(tmp / "ref")))
    return by_step(read_losses(tmp / "ref"))


@pytest.mark.slow  # the real baseline recipe covers this on every CI run (test_recipes_on_ray.py)
def test_two_workers_match_one_worker_for_the_same_global_batch(ray_cluster, tmp_path):
    one = short_config(tmp_path, "one", steps=4, workers=1)
    one.data.batch_size = 8
    two = short_config(tmp_path, "two", steps=4, workers=2)  # 4 rows per rank: same global batch
    m1 = run_training(one, recipe_builder=ToyRecipeBuilder(str(tmp_path / "r1")))
    m2 = run_training(two, recipe_builder=ToyRecipeBuilder(str(tmp_path / "r2")))
    l1, l2 = read_losses(tmp_path / "r1"), read_losses(tmp_path / "r2")
    assert [s for s, _ in l1] == [1, 2, 3, 4]
    assert by_step(l1) == pytest.approx(by_step(l2), rel=1e-12)
    assert read_losses(tmp_path / "r2", rank=1) == l2  # both ranks see the globally reduced loss
    assert m1["step"] == m2["step"] == 4
    assert m1["val/ce"] == pytest.approx(m2["val/ce"], rel=1e-12)
    # Rank 0 logged through the real tracking backend (JSONL) in <output_dir>/<run name>.
    assert (Path(one.run.output_dir) / "one" / "metrics.jsonl").read_text().strip()


def test_rerun_with_same_name_resumes_exactly(ray_cluster, uninterrupted, tmp_path):
    expected = uninterrupted
    crashing = short_config(tmp_path, "resumed", steps=8)
    builder = ToyRecipeBuilder(str(tmp_path / "res"), crash_once_at_step=5)  # last checkpoint: step 4
    with pytest.raises(Exception, match="planned crash"):
        run_training(crashing, recipe_builder=builder)
    metrics = run_training(crashing, recipe_builder=builder)  # same name + storage: resumes

    steps = [s for s, _ in read_losses(tmp_path / "res")]
    assert steps == [1, 2, 3, 4, 5, 5, 6, 7, 8]  # step 5 redone from the step-4 checkpoint
    assert by_step(read_losses(tmp_path / "res")) == pytest.approx(expected, rel=1e-12)
    assert metrics["step"] == 8
    # Each rank's recipe ran in a thread named by run and rank (the dashboard's Stack Trace shows it).
    threads = {rank: {json.loads(line)["thread"] for line in (tmp_path / "res" / f"losses-rank{rank}.jsonl").open()}
               for rank in (0, 1)}
    assert threads == {0: {"wmtp resumed rank 0"}, 1: {"wmtp resumed rank 1"}}
    kept = sorted(p.name for p in (Path(crashing.run.output_dir) / "ray" / "resumed").glob("checkpoint_step*"))
    assert len(kept) == crashing.orchestration.keep_checkpoints
    assert "checkpoint_step00000008" in kept  # the latest is always kept


def test_killed_worker_is_restarted_from_the_last_checkpoint(ray_cluster, uninterrupted, tmp_path):
    cfg = short_config(tmp_path, "killed", steps=8, max_failures=1)
    record = tmp_path / "rec"
    builder = ToyRecipeBuilder(str(record), step_sleep_s=0.25)
    killed: list[int] = []

    def kill_rank1_mid_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pids = list(record.glob("pid-rank1-*"))
            losses = record / "losses-rank1.jsonl"
            if pids and losses.exists() and len(losses.read_text().splitlines()) >= 5:
                pid = int(pids[0].name.rsplit("-", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank1_mid_run, daemon=True)
    killer.start()
    metrics = run_training(cfg, recipe_builder=builder)
    killer.join(timeout=5)
    assert killed, "the test never found rank 1's pid"
    assert metrics["step"] == 8
    # The restarted group wrote new pid files whose content is the step it resumed from.
    restarts = [p for p in record.glob("pid-rank*") if int(p.name.rsplit("-", 1)[1]) not in killed]
    resumed_from = {int(p.read_text()) for p in restarts} - {0}
    assert resumed_from and all(s % cfg.train.checkpoint_every == 0 and s >= 4 for s in resumed_from)
    assert by_step(read_losses(record)) == pytest.approx(uninterrupted, rel=1e-12)


def test_s3_storage_on_moto_holds_checkpoints_and_resumes(ray_cluster, moto_s3, tmp_path):
    bucket = moto_s3.create_bucket()
    cfg = short_config(tmp_path, "s3run", steps=4, storage_path=f"s3://{bucket}/ray")
    builder = ToyRecipeBuilder(str(tmp_path / "rec"))
    run_training(cfg, recipe_builder=builder)
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("ray/s3run/checkpoint_step00000004/") and k.endswith("state.pt") for k in keys)

    cfg.train.steps = 6  # same name and storage: continues from the step-4 checkpoint in S3
    metrics = run_training(cfg, recipe_builder=builder)
    assert [s for s, _ in read_losses(tmp_path / "rec")] == [1, 2, 3, 4, 5, 6]
    assert metrics["step"] == 6


@pytest.mark.slow  # the uploads' backoff (2+5+10+20 s) runs out against a dead endpoint: ≈ 1.5 min
@pytest.mark.timeout(900)
def test_s3_endpoint_dying_mid_upload_keeps_the_checkpoint_and_names_the_uploaded_one(ray_cluster, tmp_path,
                                                                                     monkeypatch):
    """At HEAD: exit 1 with a traceback, and the summary said there was no checkpoint although
    step 2's was uploaded."""
    import json
    import subprocess
    import sys

    import boto3

    from tests.fixtures.services import _stop, _wait_http, free_port
    from wmtp.storage.errors import StorageError

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    try:
        _wait_http(f"{endpoint}/moto-api/", moto)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="ckpt")
        cfg = short_config(tmp_path, "s3dies", steps=8, workers=1, storage_path="s3://ckpt/ray")

        def kill_after_first_upload() -> None:
            while moto.poll() is None:
                try:
                    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="ckpt").get("Contents", [])]
                except Exception:
                    return
                if any("checkpoint_step00000002/" in k for k in keys):
                    time.sleep(0.5)  # the upload's last objects
                    _stop(moto)
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_after_first_upload, daemon=True)
        killer.start()
        with pytest.raises(StorageError, match=r"checkpoint_step0000000[4-8] could not be uploaded .* kept at"):
            run_training(cfg, recipe_builder=ToyRecipeBuilder(str(tmp_path / "rec"), step_sleep_s=1.0))
        killer.join(timeout=30)
    finally:
        _stop(moto)
    run = Path(cfg.run.output_dir) / "s3dies"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "FAILED"
    assert summary["paths"]["checkpoint"] == "s3://ckpt/ray/s3dies/checkpoint_step00000002"
    kept = list((run / "checkpoints_not_uploaded").glob("checkpoint_step*/*"))
    assert kept, "the checkpoint that could not be uploaded is kept locally"

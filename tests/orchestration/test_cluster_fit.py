"""`wmtp train ... --dry-run --cluster FILE`: the plan against a cluster file's nodes; a plan that
does not fit exits 2 naming the fix (GPUs, memory per GPU, wmtp_experience, checkpoint disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wmtp.cli import main
from wmtp.orchestration.cluster_fit import read_cluster_file

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
VERIFIABLE_7B = ["train", "--recipe", "configs/recipe.verifiable.yaml", "--preset", "a100x4", "--dry-run"]


def dry_run(capsys, cluster, *overrides):
    code = main([*VERIFIABLE_7B, "--cluster", str(cluster), *overrides])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cluster_files_are_read_as_their_nodes():
    one = read_cluster_file(CLUSTER / "a100x4.yaml")
    assert one.gpus == 4 and [(g.gpu_gib, round(g.disk_gib)) for g in one.groups] == [(80.0, 931)]
    assert read_cluster_file(CLUSTER / "a100x4-2node.yaml").gpus == 8
    job = read_cluster_file(CLUSTER / "rayjob.yaml")
    assert job.gpus == 4 and job.groups[1].gpu_gib == 80.0  # the GKE label of the 80GB A100


@pytest.mark.parametrize("name", ["a100x4.yaml", "rayjob.yaml"])
def test_colocated_7b_verifiable_fits_the_shipped_files(capsys, name):
    code, out, _ = dry_run(capsys, CLUSTER / name)
    assert code == 0 and f"# cluster check: fits {CLUSTER / name}" in out


def test_async_on_one_node_is_refused_for_gpus(capsys):
    code, _, err = dry_run(capsys, CLUSTER / "a100x4.yaml", "orchestration.placement=async")
    assert code == 2 and "8 GPU" in err and "has 4 GPU" in err and "orchestration.placement=colocated" in err
    assert "Traceback" not in err


def test_async_with_two_learners_is_refused_for_memory_per_gpu(capsys):
    code, _, err = dry_run(capsys, CLUSTER / "a100x4.yaml", "orchestration.placement=async",
                           "orchestration.num_workers=2")
    assert code == 2 and "memory per GPU: the plan needs 104." in err and "have 80 GiB" in err
    assert "only colocated fits" in err


def test_dedicated_experience_nodes_need_the_resource(capsys):
    code, _, err = dry_run(capsys, CLUSTER / "a100x4-2node.yaml", "orchestration.placement=async",
                           "orchestration.experience_nodes=dedicated", "orchestration.num_workers=4")
    assert code == 2 and "needs 4 wmtp_experience" in err and "defines 0" in err
    assert 'resources: {"wmtp_experience": 4' in err


def test_node_local_checkpoints_on_a_small_disk_are_refused(capsys, tmp_path):
    small = tmp_path / "small-disk.yaml"
    small.write_text((CLUSTER / "a100x4.yaml").read_text().replace("diskSizeGb: 1000", "diskSizeGb: 500"))
    code, _, err = dry_run(capsys, small)
    assert code == 2 and "checkpoint disk: a node needs 569 GiB" in err and "have 466 GiB" in err
    assert "orchestration.storage_path=s3://" in err
    # The fix it names works: remote storage keeps a staging copy and one download per node.
    code, out, _ = dry_run(capsys, small, "orchestration.storage_path=s3://bucket/wmtp/ray")
    assert code == 0 and "# cluster check: fits" in out


def test_a_missing_cluster_file_is_a_user_error(capsys, tmp_path):
    code, _, err = dry_run(capsys, tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml' does not exist" in err

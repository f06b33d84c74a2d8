"""Checkpoint scores survive Ray's saved checkpoint list: a controller restored after the driver
died ranks every checkpoint (no Ray cluster needed: Ray's own state model and scoring code)."""

from __future__ import annotations

import json
import math
import sys

import pytest
from ray.train import CheckpointConfig
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _TrainingResultState

from wmtp.orchestration.reporting import SNAPSHOT_FILE, ReportState, repair_checkpoint_snapshot, worst_score
from wmtp.orchestration.storage import TrainStorage


def restored_score(metrics: dict, attribute: str, mode: str):
    """What Ray's restored controller computes for a checkpoint reported with `metrics`."""
    saved = _TrainingResultState(checkpoint_dir_name="checkpoint_step00000002", metrics=metrics).json()
    restored = _TrainingResultState.parse_obj(json.loads(saved))
    manager = _CheckpointManager(CheckpointConfig(checkpoint_score_attribute=attribute, checkpoint_score_order=mode))
    return manager._get_checkpoint_score(_TrainingResult(checkpoint=None, metrics=restored.metrics))


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("validated", [None, math.nan, math.inf])
def test_a_checkpoint_score_is_finite_before_and_after_a_bad_validation(mode, validated):
    state = ReportState("val/ce", mode)
    state.update({"train/loss": 1.5} if validated is None else {"train/loss": 1.5, "val/ce": validated}, step=2)
    payload = state.payload(2)
    assert payload["val/ce"] == worst_score(mode) and math.isfinite(payload["val/ce"])
    # Ray ranks by (not nan, ±score): the worst finite score ranks below every real one.
    assert restored_score(payload, "val/ce", mode) == (True, -sys.float_info.max)
    state.update({"val/ce": 0.25}, step=4)
    assert state.payload(4)["val/ce"] == 0.25


def test_an_infinite_score_was_what_broke_the_restored_controller():
    # The old worst score: pydantic writes inf as null, and Ray's scoring multiplies it.
    with pytest.raises(TypeError, match="NoneType"):
        restored_score({"val/ce": math.inf, "step": 2}, "val/ce", "min")


def test_repair_gives_a_saved_checkpoint_list_finite_scores(tmp_path):
    run = tmp_path / "ray" / "baseline-local-light"
    run.mkdir(parents=True)
    entry = {"version": 0, "checkpoint_dir_name": "checkpoint_step00000004", "metrics": {"step": 4, "val/ce": None}}
    good = {"version": 0, "checkpoint_dir_name": "checkpoint_step00000006", "metrics": {"step": 6, "val/ce": 3.5}}
    snapshot = {"ray_version": "x", "checkpoint_results": [entry, good], "latest_checkpoint_result": good,
                "pending_training_results": [], "current_report_index": 2}
    (run / SNAPSHOT_FILE).write_text(json.dumps(snapshot))
    storage = TrainStorage(str(tmp_path / "ray"))
    assert repair_checkpoint_snapshot(storage, "baseline-local-light", "val/ce", "min")
    repaired = json.loads((run / SNAPSHOT_FILE).read_text())
    assert repaired["checkpoint_results"][0]["metrics"]["val/ce"] == worst_score("min")
    assert repaired["checkpoint_results"][1] == good and repaired["latest_checkpoint_result"] == good
    assert not repair_checkpoint_snapshot(storage, "baseline-local-light", "val/ce", "min")  # nothing left
    assert not repair_checkpoint_snapshot(storage, "no-such-run", "val/ce", "min")

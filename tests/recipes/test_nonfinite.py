"""Non-finite loss: stop with a clear message naming the step (CLI: exit 2, no traceback), or skip
and count the skipped batches."""

from __future__ import annotations

import pytest

from tests.recipes.harness import TINY, recipe_config, run, series
from wmtp.training.nonfinite import NonFiniteLossError

# Step 1 is finite (fresh weights); its update with lr 1e30 makes every later loss non-finite.
EXPLODE = ("optim.lr=1e30", "optim.warmup_steps=0", "optim.grad_clip=null")


def test_stop_names_the_step_and_keeps_the_checkpoint(tmp_path):
    cfg = recipe_config("baseline", tmp_path, *EXPLODE, "train.checkpoint_every=1", "train.nonfinite=stop")
    with pytest.raises(NonFiniteLossError, match=r"at step 2; training stopped.*step_000001"):
        run(cfg)
    assert (tmp_path / "baseline-local-light" / "checkpoints" / "step_000001").is_dir()


def test_cli_reports_a_clean_error(tmp_path, capsys):
    from wmtp.cli import main

    code = main(["train", "--local", "--recipe", "baseline", "--preset", "local-light", *TINY,
                 f"run.output_dir={tmp_path}", *EXPLODE])
    err = capsys.readouterr().err
    assert code == 2
    assert "wmtp: error: non-finite loss" in err and "at step 2" in err and "Traceback" not in err


def test_skip_counts_skipped_batches(tmp_path):
    out = run(recipe_config("baseline", tmp_path, *EXPLODE, "train.nonfinite=skip", "train.max_skipped_batches=5"))
    assert series(out, "train/skipped_batches") == [0.0, 1.0, 2.0, 3.0]
    assert len(series(out, "train/loss")) == 1  # only step 1 had a finite loss


def test_skip_stops_past_the_limit(tmp_path):
    cfg = recipe_config("baseline", tmp_path, *EXPLODE, "train.nonfinite=skip", "train.max_skipped_batches=1")
    with pytest.raises(NonFiniteLossError, match=r"at step 3: 2 batches skipped"):
        run(cfg)


def test_skipped_steps_do_not_move_the_ema_normaliser(tmp_path):
    """The EMA normaliser's update is staged and committed only when the guard accepts the step:
    steps 2-4 are skipped, so the checkpointed EMA has seen step 1 alone."""
    import torch

    out = run(recipe_config("verifiable", tmp_path, *EXPLODE, "train.nonfinite=skip", "train.max_skipped_batches=5",
                            "stage2.value_weighting.td_error_normalization=ema", "train.checkpoint_every=1"))
    assert series(out, "train/skipped_batches")[-1] == 3.0
    states = {}
    for step in (3, 4):  # the two checkpoints kept
        extra = torch.load(out / "checkpoints" / f"step_{step:06d}" / "extra_rank0.pt", weights_only=False)
        states[step] = extra["stateful"]["normalizer"]
    assert states[4]["steps"] == 1 and states[3] == states[4]


def _checkpoints(out):
    root = out / "checkpoints"
    return sorted(p.name for p in root.glob("step_*")) if root.is_dir() else []


def test_skip_never_checkpoints_nonfinite_weights(tmp_path, monkeypatch):
    """Step 1's loss and gradients are finite, but its update leaves a NaN weight (injected here, as
    an overflowing update would: torch refuses an lr that overflows float32 outright). Every later
    batch is skipped. At HEAD the skipped steps were checkpointed with the NaN weight, and a later
    stop called that checkpoint the last good one."""
    import torch

    import wmtp.recipes.baseline as baseline

    real = baseline.optimizer_step

    def overflowing_step(parts, loss, cfg, layout, guard, step):
        norms = real(parts, loss, cfg, layout, guard, step)
        if step == 1:
            with torch.no_grad():
                next(parts[0].model.parameters()).view(-1)[0] = float("nan")
        return norms

    monkeypatch.setattr(baseline, "optimizer_step", overflowing_step)
    cfg = recipe_config("baseline", tmp_path, "train.nonfinite=skip", "train.max_skipped_batches=5",
                        "train.checkpoint_every=2")
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights at step 2 in policy.*not written.*"
                                                 r"No checkpoint had been saved yet"):
        run(cfg)
    assert _checkpoints(tmp_path / "baseline-local-light") == []


def test_skip_stops_after_consecutive_skips(tmp_path):
    cfg = recipe_config("baseline", tmp_path, *EXPLODE, "train.nonfinite=skip", "train.max_skipped_batches=50",
                        "train.max_consecutive_skipped=2", "train.steps=6", "train.checkpoint_every=1")
    with pytest.raises(NonFiniteLossError, match=r"at step 3: 2 batches in a row skipped \(steps 2-3;.*"
                                                 r"Last good checkpoint: .*step_000002"):
        run(cfg)
    # Step 2's checkpoint holds step 1's (finite) weights; nothing after the stop.
    assert _checkpoints(tmp_path / "baseline-local-light") == ["step_000001", "step_000002"]

"""Checkpoint state: exact resume (model, optimizer, scheduler, RNG) and crash atomicity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F

from wmtp.model.transformer import build_model
from wmtp.training import (
    CheckpointError,
    LocalCheckpointSink,
    build_optimizer,
    build_scheduler,
    checkpoint_step,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


def _train_step(model, opt, sched, tokens):
    out = model(tokens, return_logits=True)
    logits = out.logits  # [B, S, H, V]
    targets = torch.randint(0, logits.shape[-1], logits.shape[:-1])  # consumes the torch RNG
    keep = (torch.rand(logits.shape[:-1]) > 0.2).float()  # random token mask: RNG matters
    loss = (F.cross_entropy(logits.flatten(0, 2), targets.flatten(), reduction="none") * keep.flatten()).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()


def _setup(args, seed):
    model = build_model(args, seed=seed)
    opt = build_optimizer(model, lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    sched = build_scheduler(opt, warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    return model, opt, sched


def test_resume_is_exact(tiny_args, tmp_path):
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))

    seed_everything(0)
    model, opt, sched = _setup(tiny_args, seed=0)
    reference = [_train_step(model, opt, sched, tokens) for _ in range(6)]
    ref_params = {k: v.clone() for k, v in model.state_dict().items()}

    seed_everything(0)
    model, opt, sched = _setup(tiny_args, seed=0)
    first = [_train_step(model, opt, sched, tokens) for _ in range(3)]
    sink = LocalCheckpointSink(tmp_path / "run", keep=2)

    def write(d):
        save_checkpoint(d, models={"policy": model}, optimizers={"policy": opt}, schedulers={"policy": sched},
                        extra={"step": 3, "rng": rng_state(), "sampler": {"epoch": 0, "position": 6}})

    sink.save(3, write, {"train/loss": first[-1]})
    del model, opt, sched

    seed_everything(12345)  # a "new process": different RNG, different init
    model, opt, sched = _setup(tiny_args, seed=7)
    latest = sink.latest()
    assert latest == tmp_path / "run" / "checkpoints" / "step_000003" and checkpoint_step(latest) == 3
    extra = load_checkpoint(latest, {"policy": model}, {"policy": opt}, {"policy": sched})
    set_rng_state(extra["rng"])
    assert extra["step"] == 3 and extra["sampler"] == {"epoch": 0, "position": 6}
    resumed = first + [_train_step(model, opt, sched, tokens) for _ in range(3)]
    assert resumed == reference  # bit-exact on CPU
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_params[k]), k
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-3 * sched.lr_lambdas[0](6))


def test_load_names_missing_components(tmp_path):
    lin = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "c", models={"policy": lin})
    with pytest.raises(CheckpointError, match=r"has no model \['critic'\]; it holds \['policy'\]"):
        load_checkpoint(tmp_path / "c", {"critic": lin})
    with pytest.raises(CheckpointError, match="not a wmtp checkpoint"):
        load_checkpoint(tmp_path, {"policy": lin})
    with pytest.raises(ValueError, match="model name 'a/b'"):
        save_checkpoint(tmp_path / "d", models={"a/b": lin})


def _saver(value):
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.fill_(value)
    return lambda d: save_checkpoint(d, models={"m": lin}, extra={"value": value})


def _value(path):
    return load_checkpoint(path, {"m": torch.nn.Linear(2, 2)})["value"]


def test_crash_before_marking_keeps_previous_latest(tmp_path, monkeypatch):
    sink = LocalCheckpointSink(tmp_path, keep=3)
    assert sink.latest() is None
    sink.save(50, _saver(1.0), {"loss": 1.0})
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000050"

    # Killed after the new directory was renamed into place, before `latest` was rewritten.
    def killed(name):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(sink, "_mark", killed)
    with pytest.raises(KeyboardInterrupt):
        sink.save(100, _saver(2.0), {})
    assert sink.latest() == tmp_path / "checkpoints" / "step_000050" and _value(sink.latest()) == 1.0
    monkeypatch.undo()

    # Killed while writing: the half-written temporary directory is never taken for a checkpoint.
    def half_write(d):
        (d / "model.m.pt").write_bytes(b"partial")
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        sink.save(150, half_write, {})
    assert any(p.name.startswith(".step_000150") for p in (tmp_path / "checkpoints").iterdir())
    sink = LocalCheckpointSink(tmp_path, keep=3)  # the rerun cleans the leftovers
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000050", "step_000100"]
    assert sink.latest().name == "step_000050"

    # The rerun re-saves step 100 (overwriting the unmarked one) and marks it.
    sink.save(100, _saver(3.0), {})
    assert sink.latest().name == "step_000100" and _value(sink.latest()) == 3.0


def test_a_complete_folder_newer_than_the_marker_is_a_candidate_first(tmp_path, monkeypatch):
    sink = LocalCheckpointSink(tmp_path, keep=3)
    sink.save(2, _saver(1.0), {})
    monkeypatch.setattr(sink, "_mark", lambda name: None)  # killed between the rename and the marker
    sink.save(4, _saver(2.0), {})
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert sink.latest() == root / "step_000002"
    assert sink.candidates() == [root / "step_000004", root / "step_000002"]

    # Resuming from the marked one (the newer failed verification) moves the newer one aside.
    sink.resume_from(root / "step_000002")
    assert (root / ".damaged-step_000004").is_dir() and not (root / "step_000004").exists()
    assert sink.candidates() == [root / "step_000002"]


def test_keep_prunes_oldest(tmp_path):
    sink = LocalCheckpointSink(tmp_path, keep=2)
    for step in (10, 20, 30, 40):
        sink.save(step, _saver(float(step)), {"valid/loss": 1.0 / step})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_000030", "step_000040"]
    assert _value(sink.latest()) == 40.0
    assert '"valid/loss": 0.025' in (sink.latest() / "metrics.json").read_text()


def test_sigkill_mid_save_leaves_previous_checkpoint(tmp_path):
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import time, pathlib, torch
        from wmtp.training import LocalCheckpointSink, save_checkpoint
        sink = LocalCheckpointSink({str(tmp_path)!r})
        lin = torch.nn.Linear(2, 2)
        sink.save(1, lambda d: save_checkpoint(d, models={{"m": lin}}, extra={{"value": 1.0}}), {{}})
        def slow(d):
            save_checkpoint(d, models={{"m": lin}}, extra={{"value": 2.0}})
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(60)
        sink.save(2, slow, {{}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "checkpoint writer died early"
            assert time.monotonic() < deadline, "checkpoint writer never reached the second save"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    sink = LocalCheckpointSink(tmp_path)
    assert sink.latest().name == "step_000001" and _value(sink.latest()) == 1.0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000001"]

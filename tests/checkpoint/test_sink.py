"""The local checkpoint sink: atomic publish, the `latest` marker, pruning, crash atomicity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from wmtp.checkpoint import LocalCheckpointSink


def write_value(d, value):
    """A checkpoint writer: what it writes is the recipe's; the sink only publishes the folder."""
    torch.save({"value": value}, d / "extra.pt")


def _saver(value):
    return lambda d: write_value(d, value)


def _value(path):
    return torch.load(path / "extra.pt", weights_only=True)["value"]


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
        from wmtp.checkpoint import LocalCheckpointSink
        sink = LocalCheckpointSink({str(tmp_path)!r})
        sink.save(1, lambda d: torch.save({{"value": 1.0}}, d / "extra.pt"), {{}})
        def slow(d):
            torch.save({{"value": 2.0}}, d / "extra.pt")
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

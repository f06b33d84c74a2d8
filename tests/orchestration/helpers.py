"""Shared helpers of the orchestration tests (configs for short runs, reading toy records)."""

from __future__ import annotations

import json
from pathlib import Path

from wmtp.config.schema import WMTPConfig


def short_config(tmp_path: Path, name: str, *, steps: int = 8, workers: int = 2, **orch) -> WMTPConfig:
    """A config for a few-step toy run: checkpoints every 2 steps, reports every 2, JSONL tracking."""
    cfg = WMTPConfig()
    cfg.run.name = name
    cfg.run.output_dir = str(tmp_path / "out")
    cfg.tracking.backends = ["jsonl"]
    cfg.train.steps = steps
    cfg.train.checkpoint_every = 2
    cfg.train.eval_every = 2
    cfg.train.log_every = 1
    cfg.data.batch_size = 4
    cfg.optim.lr = 0.05  # the toy recipe's SGD step size
    cfg.orchestration.num_workers = workers
    cfg.orchestration.report_every = 2
    cfg.orchestration.max_failures = 0
    for key, value in orch.items():
        setattr(cfg.orchestration, key, value)
    return cfg


def read_losses(record_dir: Path, rank: int = 0) -> list[tuple[int, float]]:
    """(step, loss) lines a toy rank wrote, in write order (a resumed run appends after the first)."""
    path = Path(record_dir) / f"losses-rank{rank}.jsonl"
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines())]


def by_step(records: list[tuple[int, float]]) -> dict[int, float]:
    """Last loss written per step (a step redone after a resume overwrites the killed attempt's)."""
    return dict(records)

"""Shared helpers of the recipe tests: one tiny deterministic configuration, in-process runs, and
reading per-step metrics back from a run's JSONL log."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from wmtp.config.loader import load_config
from wmtp.config.paths import run_dir
from wmtp.tracking.jsonl import metric_series

REPO = Path(__file__).resolve().parents[2]
SYNTH_PROBLEMS = 200

# 4 steps of the micro model on 4 sequences of ≤96 tokens: ~0.3 s a step on 2 cores. One head
# (local-light's demo has 2): the golden values were recorded on the one-head shape, and the MTP
# cases say `model.n_future_tokens=4` themselves.
TINY = ["orchestration.enabled=false", "model.n_future_tokens=1", "tracking.backends=[jsonl]", f"data.synth_problems={SYNTH_PROBLEMS}",
        "data.batch_size=4", "data.max_seq_len=96", "train.steps=4", "train.log_every=1", "train.eval_every=4",
        "train.checkpoint_every=4", "train.eval_batches=1", "train.heatmap_samples=2", "optim.warmup_steps=2"]


def recipe_config(recipe: str, output_dir: str | Path, *overrides: str):
    return load_config(str(REPO / "configs/defaults.yaml"), str(REPO / f"configs/recipe.{recipe}.yaml"),
                       "local-light", overrides=[*TINY, f"run.output_dir={output_dir}", *overrides])


def run(cfg) -> Path:
    """Run `cfg` in this process; returns its run directory."""
    from wmtp.recipes import run_recipe
    from wmtp.tracking.registry import build_run_logger

    run_recipe(cfg, make_logger=build_run_logger)
    return run_dir(cfg)


def series(run_directory: Path, key: str) -> list[float]:
    """Per-step values of `key` (last logged value per step wins: resumed runs append)."""
    return [v for _, v in metric_series(run_directory / "metrics.jsonl", key)]


def steps_of(run_directory: Path, key: str) -> list[int]:
    return [s for s, _ in metric_series(run_directory / "metrics.jsonl", key)]


def cli_command(recipe: str, output_dir: str | Path, *overrides: str) -> list[str]:
    """`python -m wmtp train --local ...` with the tiny configuration (for subprocess runs)."""
    return [sys.executable, "-m", "wmtp", "train", "--local", "--recipe", f"configs/recipe.{recipe}.yaml",
            "--preset", "local-light", *TINY, f"run.output_dir={output_dir}", *overrides]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}

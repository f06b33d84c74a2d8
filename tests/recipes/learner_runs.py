"""Run a recipe in this process on 1 rank or inside a gloo rank (`tests.fixtures.distributed`),
with an in-memory logger and a shared-folder checkpoint sink, and return its per-step metrics and
a fingerprint of its final weights. Used by the learner-scoring, snapshot-resume and frozen-model
tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from tests.recipes.harness import recipe_config


class MemoryLogger:
    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}

    def log_params(self, params) -> None:
        pass

    def log_metrics(self, metrics, step: int) -> None:
        self.metrics.setdefault(step, {}).update(metrics)

    def log_artifact(self, local_path, artifact_path=None) -> None:
        pass

    def close(self) -> None:
        pass


class FolderSink:
    """`CheckpointSink` over `<root>/step_NNNNNN` folders, shared by every rank (DCP shards +
    `extra_rank{r}.pt` in one folder), the newest complete one is `latest`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def latest(self) -> Path | None:
        done = sorted(p.parent for p in self.root.glob("step_*/.complete"))
        return done[-1] if done else None

    def save(self, step: int, write: Callable[[Path], None], metrics) -> None:
        import torch.distributed as dist

        path = self.root / f"step_{step:06d}"
        path.mkdir(parents=True, exist_ok=True)
        write(path)
        if not dist.is_initialized() or dist.get_rank() == 0:
            (path / ".complete").touch()
        if dist.is_initialized():
            dist.barrier()


class Crash(RuntimeError):
    pass


def fingerprint(model: torch.nn.Module) -> dict[str, float]:
    """Sum and sum of squares of every full tensor of `model` (gathers FSDP shards one at a time)."""
    out = {}
    for key, value in model.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        full = full.detach().double()
        out[key] = (float(full.sum()), float(full.square().sum()))
    return out


def train(recipe_name: str, output_dir: Path, *overrides: str, crash_after: int | None = None,
          inspect: Callable | None = None) -> dict:
    """Set up and train `recipe_name` on the tiny configuration (resuming from `output_dir`'s
    checkpoints when there are some); `crash_after=k` raises right after step k (a crash between
    checkpoints). Returns {"metrics": {step: {...}}, "policy": fp, "critic": fp | None}."""
    from wmtp.recipes import build_recipe

    cfg = recipe_config(recipe_name, output_dir, *overrides)
    logger, sink = MemoryLogger(), FolderSink(Path(output_dir) / "ckpt")
    recipe = build_recipe(cfg, logger=logger, checkpoint_sink=sink)
    recipe.setup()
    if crash_after is not None:
        step = recipe.step

        def crashing(s: int):
            out = step(s)
            if s == crash_after:
                raise Crash(f"crash after step {s}")
            return out

        recipe.step = crashing
    try:
        try:
            recipe.train()
        except Crash:
            pass
        result = {"metrics": logger.metrics, "policy": fingerprint(recipe.policy.model)}
        critic = getattr(recipe, "critic_model", None)
        result["critic"] = fingerprint(critic) if critic is not None else None
        if inspect is not None:
            result["inspect"] = inspect(recipe, sink)
        return result
    finally:
        recipe.close()


def rank_train(rank: int, world_size: int, recipe_name: str, output_dir: str, overrides: tuple,
               crash_after: int | None = None) -> dict:
    """`train` inside a gloo rank of `run_distributed`."""
    return train(recipe_name, Path(output_dir), *overrides, crash_after=crash_after)

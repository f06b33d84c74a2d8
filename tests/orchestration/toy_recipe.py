"""A small recipe following the wmtp recipe contract, for testing the Ray machinery on its own.

Linear regression `y = x·w*` trained with SGD; the global batch of step t is a pure function of
(seed, t), split across ranks by row (`rows[rank::world]`), squared errors summed locally and
divided by the GLOBAL row count, gradients all-reduced: so 1 process and N workers give the same
losses. Per-step losses go to `<record_dir>/losses-rank<r>.jsonl` (appended, so a resumed run adds
its steps after the killed run's).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

DIM = 8


@dataclass
class ToyRecipeBuilder:
    """Picklable `build_recipe` stand-in. `step_sleep_s` slows steps (kill tests)."""

    record_dir: str
    step_sleep_s: float = 0.0
    crash_once_at_step: int | None = None  # raise once (marker file in record_dir) after this step

    def __call__(self, cfg: Any, *, logger: Any, checkpoint_sink: Any, scorer_factory: Any = None) -> ToyRecipe:
        return ToyRecipe(cfg, logger, checkpoint_sink, self)


class ToyRecipe:
    def __init__(self, cfg: Any, logger: Any, sink: Any, options: ToyRecipeBuilder) -> None:
        self.cfg, self.logger, self.sink, self.options = cfg, logger, sink, options
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1

    def setup(self) -> None:
        gen = torch.Generator().manual_seed(self.cfg.run.seed)
        self.w_star = torch.randn(DIM, generator=gen, dtype=torch.float64)
        self.w = torch.zeros(DIM, dtype=torch.float64)
        self.step = 0
        latest = self.sink.latest()
        if latest is not None:
            state = torch.load(latest / "state.pt", weights_only=True)
            self.w, self.step = state["w"], int(state["step"])
        record = Path(self.options.record_dir)
        record.mkdir(parents=True, exist_ok=True)
        (record / f"pid-rank{self.rank}-{os.getpid()}").write_text(str(self.step))
        self.record = record / f"losses-rank{self.rank}.jsonl"

    def _batch(self, step: int, n: int, salt: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + step * 7919 + salt)
        x = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
        return x, x @ self.w_star

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def train(self) -> dict[str, float]:
        cfg = self.cfg
        global_rows = cfg.data.batch_size * self.world
        loss_value = float("nan")
        while self.step < cfg.train.steps:
            step = self.step + 1
            x, y = self._batch(step, global_rows)
            x, y = x[self.rank :: self.world], y[self.rank :: self.world]
            err = x @ self.w - y
            loss = self._all_reduce((err**2).sum()) / global_rows
            grad = self._all_reduce(2 * x.T @ err) / global_rows
            self.w = self.w - self.cfg.optim.lr * grad
            self.step = step
            loss_value = float(loss)
            with self.record.open("a") as fh:
                fh.write(json.dumps({"step": step, "loss": loss_value, "thread": threading.current_thread().name}) + "\n")
            metrics = {"train/loss": loss_value, "train/tokens_per_s": 100.0 + step}
            if step % cfg.train.eval_every == 0:
                metrics["val/ce"] = self._validate()
            if step % cfg.train.log_every == 0:
                self.logger.log_metrics(metrics, step)
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                self.sink.save(step, self._write, metrics)
            crash = self.options.crash_once_at_step
            marker = Path(self.options.record_dir) / "crashed"
            if crash is not None and step == crash and not marker.exists():
                marker.write_text(str(step))
                raise RuntimeError(f"toy recipe: planned crash after step {step}")
            if self.options.step_sleep_s:
                time.sleep(self.options.step_sleep_s)
        return {"train/loss": loss_value, "val/ce": self._validate()}

    def _validate(self) -> float:
        x, y = self._batch(0, 64, salt=1)
        return float(((x @ self.w - y) ** 2).mean())

    def _write(self, directory: Path) -> None:
        torch.save({"w": self.w, "step": self.step}, directory / "state.pt")

    def close(self) -> None:
        pass

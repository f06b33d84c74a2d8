"""Reference tuning for Rho-1: a next-token (one head) model trained on correct solutions with the
baseline objective; its export (`<run_dir>/export`) is the frozen reference of `rho1_weighted`.

It *is* the baseline recipe with one head and correct-only data: `self.loop`, the baseline recipe
of that configuration, does everything (the memory trace and the benchmarks step it directly).
"""

from __future__ import annotations

from wmtp.config.schema import WMTPConfig
from wmtp.config.update import update_config
from wmtp.recipes.baseline import BaselineRecipe
from wmtp.recipes.interfaces import CheckpointSink, RecipeEnv
from wmtp.tracking.base import MetricLogger


class RefTuningRecipe:
    def __init__(self, cfg: WMTPConfig, *, logger: MetricLogger, checkpoint_sink: CheckpointSink,
                 scorer_factory=None, env: RecipeEnv) -> None:
        reference_cfg = update_config(cfg, {"model.n_future_tokens": 1, "data.samples": "correct"}, "recipe ref_tuning")
        self.cfg = reference_cfg
        self.loop = BaselineRecipe(reference_cfg, logger=logger, checkpoint_sink=checkpoint_sink, env=env)

    def setup(self) -> None:
        self.loop.setup()

    def train(self) -> dict[str, float]:
        return self.loop.train()

    def close(self) -> None:
        self.loop.close()

"""Baseline MTP: every response token weighted 1 (docs/MATH.md, `W ≡ 1`).

build → setup → train (`wmtp.recipes.loop.run_steps` over `step`, `evaluate`, `export`) → close.
One optimizer step:
    N_k = Σ_{micro-batches, ranks} valid head-k targets
    L   = Σ_k c_k Σ_t ℓ_k(t) M_k(t) / N_k        (chunked CE, never [B, S, H, V] logits)
"""

from __future__ import annotations

import torch

from wmtp.config.schema import WMTPConfig
from wmtp.data import streams
from wmtp.evaluation.metrics import evaluate_generation, generation_eval_tasks, validate_policy
from wmtp.losses.mtp import mtp_cross_entropy
from wmtp.parallel import reduce
from wmtp.parallel.build import policy_model
from wmtp.parallel.export import export_model
from wmtp.parallel.fsdp import accumulate
from wmtp.recipes.interfaces import CheckpointSink, RecipeEnv
from wmtp.recipes.loop import StepResult, head_metrics, log_due, run_steps
from wmtp.tracking.base import MetricLogger
from wmtp.training.precision import autocast_context
from wmtp.training.state import LoopState, lr_metrics, nonfinite_guard, resume_or_start, throughput_meter
from wmtp.training.step import (
    build_trainable,
    head_coefficients,
    n_heads_of,
    optimizer_step,
    step_denominators,
)
from wmtp.training.throughput import count_step


class BaselineRecipe:
    def __init__(self, cfg: WMTPConfig, *, logger: MetricLogger, checkpoint_sink: CheckpointSink,
                 scorer_factory=None, env: RecipeEnv) -> None:
        self.cfg, self.logger, self.sink, self.env = cfg, logger, checkpoint_sink, env

    def setup(self) -> None:
        cfg = self.cfg
        self.layout = self.env.layout
        self.data = self.env.load_data(cfg)
        policy = policy_model(cfg, self.data.tokenizer.vocab_size, self.layout, self.env.checkpoints)
        self.policy = build_trainable(policy, cfg, cfg.optim.lr, self.layout)
        self.n_heads = n_heads_of(policy)
        self.coefs = head_coefficients(cfg, self.n_heads)
        self.stream = streams.train_stream(self.data.train, cfg, self.layout, samples=streams.drawn_samples(cfg))
        self.valid = streams.valid_batches(self.data.valid, cfg, self.layout)
        self.meter = throughput_meter(policy, cfg, self.layout)
        self.gen_tasks = generation_eval_tasks(cfg) if cfg.train.eval_generate_every else []
        self.state = LoopState(self.stream, nonfinite_guard(cfg, self.sink), self.meter, {"policy": self.policy})
        self.start = resume_or_start(self.state, cfg, self.sink, self.logger, self.layout)

    def step(self, step: int) -> StepResult:
        cfg, policy = self.cfg, self.policy.model
        batches = [self.stream.next() for _ in range(cfg.data.grad_accum)]
        labels = [streams.policy_labels(b, cfg.data.samples) for b in batches]
        count = count_step([b.attention_mask for b in batches], labels)
        denom = step_denominators(labels, self.n_heads, self.layout)
        loss = torch.zeros((), device=self.layout.device)
        ce = torch.zeros(self.n_heads, dtype=torch.float64, device=self.layout.device)
        for batch, lab in accumulate([policy], list(zip(batches, labels))):
            with autocast_context(self.layout.device.type, cfg.train.precision):
                out = policy(batch.tokens)
                res = mtp_cross_entropy(out.hidden, policy.output.weight, lab, head_coefficients=self.coefs,  # type: ignore[union-attr]  # a policy has its output projection
                                        denominators=denom, chunk_size=cfg.train.loss_chunk_size)
            res.loss.backward()
            loss += res.loss.detach()
            ce += res.ce_per_head.double()
        norms = optimizer_step([self.policy], loss, cfg, self.layout, self.state.guard, step)
        if norms is None:
            return None, count
        if not log_due(step, cfg.train):
            return {}, count
        return {"train/loss": reduce.global_sum(loss, self.layout),
                **head_metrics("train/ce", reduce.global_sum(ce, self.layout)),
                "train/grad_norm": norms[0], **lr_metrics(self.state)}, count

    def evaluate(self, step: int) -> dict[str, float]:
        generated = evaluate_generation(self.policy.model, self.data.tokenizer, self.gen_tasks, self.cfg,
                                        self.layout, step)
        return {**validate_policy(self.policy.model, self.valid, self.cfg, self.layout, self.cfg.data.samples),
                **generated}

    def export(self) -> None:
        export_model(self.policy.model, self.cfg, self.layout, self.data.tokenizer)

    def train(self) -> dict[str, float]:
        return run_steps(self)

    def close(self) -> None:
        pass

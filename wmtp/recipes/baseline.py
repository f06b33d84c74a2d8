"""Baseline MTP: every response token weighted 1 (docs/MATH.md, `W ≡ 1`).

build → setup → train → close. One optimizer step:
    N_k = Σ_{micro-batches, ranks} valid head-k targets
    L   = Σ_k c_k Σ_t ℓ_k(t) M_k(t) / N_k        (chunked CE, never [B, S, H, V] logits)
"""

from __future__ import annotations

import torch

from wmtp.config.schema import WMTPConfig
from wmtp.losses.mtp import mtp_cross_entropy
from wmtp.recipes import components as C
from wmtp.recipes.interfaces import CheckpointSink
from wmtp.recipes.loop import train_and_export
from wmtp.tracking.base import MetricLogger
from wmtp.training.precision import autocast_context


class BaselineRecipe:
    def __init__(self, cfg: WMTPConfig, *, logger: MetricLogger, checkpoint_sink: CheckpointSink,
                 scorer_factory=None) -> None:
        self.cfg, self.logger, self.sink = cfg, logger, checkpoint_sink

    def setup(self) -> None:
        cfg = self.cfg
        self.layout = C.process_layout(cfg.orchestration.use_gpu)
        self.data = C.load_data(cfg)
        policy = C.policy_model(cfg, self.data.tokenizer.vocab_size, self.layout)
        self.policy = C.build_trainable(policy, cfg, cfg.optim.lr)
        self.n_heads = C.n_heads_of(policy)
        self.coefs = C.head_coefficients(cfg, self.n_heads)
        self.stream = C.train_stream(self.data.train, cfg, self.layout)
        self.valid = C.valid_batches(self.data.valid, cfg, self.layout)
        self.meter = C.throughput_meter(policy, cfg, self.layout)
        self.gen_tasks = C.generation_eval_tasks(cfg) if cfg.train.eval_generate_every else []
        self.state = C.LoopState(self.stream, C.nonfinite_guard(cfg, self.sink), self.meter, {"policy": self.policy})
        self.start = C.resume_or_start(self.state, cfg, self.sink, self.logger, self.layout)

    def step(self, step: int):
        cfg, policy = self.cfg, self.policy.model
        batches = [self.stream.next() for _ in range(cfg.data.grad_accum)]
        tokens = self.stream.last_tokens * len(batches) * self.layout.world_size
        labels = [C.policy_labels(b, cfg.data.samples) for b in batches]
        denom = C.step_denominators(labels, self.n_heads, self.layout)
        loss = torch.zeros((), device=self.layout.device)
        ce = torch.zeros(self.n_heads, dtype=torch.float64, device=self.layout.device)
        for batch, lab in zip(batches, labels):
            with autocast_context(self.layout.device.type, cfg.train.precision):
                out = policy(batch.tokens)
                res = mtp_cross_entropy(out.hidden, policy.output.weight, lab, head_coefficients=self.coefs,
                                        denominators=denom, chunk_size=cfg.train.loss_chunk_size)
            res.loss.backward()
            loss += res.loss.detach()
            ce += res.ce_per_head.double()
        norms = C.optimizer_step([self.policy], loss, cfg, self.layout, self.state.guard, step)
        if norms is None:
            return None, tokens
        return {"train/loss": C.global_sum(loss, self.layout),
                **C.head_metrics("train/ce", C.global_sum(ce, self.layout)),
                "train/grad_norm": norms[0], **C.lr_metrics(self.state)}, tokens

    def evaluate(self, step: int) -> dict[str, float]:
        generated = C.evaluate_generation(self.policy.model, self.data.tokenizer, self.gen_tasks, self.cfg,
                                          self.layout, step)
        return {**C.validate_policy(self.policy.model, self.valid, self.cfg, self.layout, self.cfg.data.samples),
                **generated}

    def train(self) -> dict[str, float]:
        return train_and_export(self, self.policy.model)

    def close(self) -> None:
        pass

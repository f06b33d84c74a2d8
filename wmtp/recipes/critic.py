"""Critic pre-training: a value model learns V_j ≈ P(correct | x_{≤j}) from execution outcomes
(docs/MATH.md), then is exported for the verifiable recipe (`<run_dir>/export`).

Objectives (`critic.loss`, registry `wmtp.losses.value.VALUE_LOSSES`), on the value of the state
before each response token, `V_{j−1}`:
  mc_mse         mean (V_{j−1} − R)²
  lambda_return  mean (V_{j−1} − G^λ_j)²,  G^λ from detached values, terminal reward R
  pairwise       −log σ(v̄⁺ − v̄⁻) over (correct, incorrect) solutions of one problem
Validation: AUC of the last trained state's value `V_{e−1}` vs R (never `V_e`, which no loss
trains), pairwise accuracy, explained variance of R.
"""

from __future__ import annotations

import torch

from wmtp.config.schema import WMTPConfig
from wmtp.data import streams
from wmtp.evaluation.critic_quality import critic_quality
from wmtp.evaluation.metrics import final_values, pairwise_accuracy, roc_auc
from wmtp.losses.alignment import state_values
from wmtp.losses.value import explained_variance, mean_response_value
from wmtp.parallel import reduce
from wmtp.parallel.build import critic_model, policy_args, source_policy
from wmtp.parallel.export import export_model
from wmtp.parallel.fsdp import accumulate
from wmtp.recipes.interfaces import CheckpointSink, RecipeEnv
from wmtp.recipes.loop import StepResult, log_due, run_steps
from wmtp.tracking.base import MetricLogger
from wmtp.training.precision import autocast_context
from wmtp.training.state import LoopState, lr_metrics, nonfinite_guard, resume_or_start, throughput_meter
from wmtp.training.step import build_trainable, optimizer_step
from wmtp.training.throughput import count_step
from wmtp.weighting.gae import lambda_returns


class CriticRecipe:
    def __init__(self, cfg: WMTPConfig, *, logger: MetricLogger, checkpoint_sink: CheckpointSink,
                 scorer_factory=None, env: RecipeEnv) -> None:
        self.cfg, self.logger, self.sink, self.env = cfg, logger, checkpoint_sink, env

    def setup(self) -> None:
        cfg = self.cfg
        self.layout = self.env.layout
        self.data = self.env.load_data(cfg)
        vocab, reader = self.data.tokenizer.vocab_size, self.env.checkpoints
        args = policy_args(cfg, vocab, reader=reader)
        # The policy checkpoint is read only to shape the critic and (init_from_policy) start its trunk.
        policy = source_policy(cfg, vocab, self.layout, reader) if cfg.model.checkpoint else None
        critic = critic_model(cfg, policy.args if policy is not None else args, self.layout, policy, reader=reader)
        del policy
        self.critic = build_trainable(critic, cfg, cfg.optim.critic_lr, self.layout)
        self.pairwise = cfg.critic.loss == "pairwise"
        # The critic always sees correct and incorrect solutions.
        self.stream = streams.train_stream(self.data.train, cfg, self.layout, samples="all",
                                           sampler="pairwise" if self.pairwise else None)
        self.valid = streams.valid_batches(self.data.valid, cfg, self.layout)
        self.meter = throughput_meter(critic.backbone, cfg, self.layout)
        self.state = LoopState(self.stream, nonfinite_guard(cfg, self.sink), self.meter, {"critic": self.critic})
        self.start = resume_or_start(self.state, cfg, self.sink, self.logger, self.layout)

    def objective(self, batch, n_global: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss share of this micro-batch, pairwise accuracy or NaN)."""
        cfg, critic = self.cfg, self.critic.model
        from wmtp.losses.value import get_value_loss

        loss_fn = get_value_loss(cfg.critic.loss)
        if self.pairwise:
            v_pos, v_neg = critic(batch.chosen.tokens), critic(batch.rejected.tokens)
            return loss_fn(state_values(v_pos), streams.response_mask(batch.chosen), state_values(v_neg),
                           streams.response_mask(batch.rejected), denominator=n_global)
        values = critic(batch.tokens)
        mask, rewards = streams.response_mask(batch), batch.is_correct.to(values.dtype)
        if cfg.critic.loss == "lambda_return":
            targets = lambda_returns(values.detach(), mask, rewards, cfg.critic.gamma, cfg.critic.lam,
                                     truncated=batch.truncated)
            loss = loss_fn(state_values(values), targets, mask, denominator=n_global)
        else:
            loss = loss_fn(state_values(values), mask, rewards, denominator=n_global)
        return loss, torch.tensor(float("nan"), device=values.device)

    def step(self, step: int) -> StepResult:
        cfg = self.cfg
        batches = [self.stream.next() for _ in range(cfg.data.grad_accum)]
        # Its trained targets are its response states (of both solutions of a pair).
        seqs = [s for b in batches for s in ((b.chosen, b.rejected) if self.pairwise else (b,))]
        count = count_step([s.attention_mask for s in seqs], [s.labels for s in seqs])
        # Global denominator: pairs (pairwise) or response states (regression) of the whole step.
        local = sum((torch.tensor(float(len(b.chosen))) if self.pairwise else streams.response_mask(b).sum().double())
                    for b in batches)
        n_global = reduce.global_sum(torch.as_tensor(local, dtype=torch.float64, device=self.layout.device), self.layout)
        loss = torch.zeros((), device=self.layout.device)
        acc = torch.zeros((), dtype=torch.float64, device=self.layout.device)
        for batch in accumulate([self.critic.model], batches):
            with autocast_context(self.layout.device.type, cfg.train.precision):
                part, pacc = self.objective(batch, n_global)
            part.backward()
            loss += part.detach()
            acc += pacc.double() / len(batches)
        norms = optimizer_step([self.critic], loss, cfg, self.layout, self.state.guard, step)
        if norms is None:
            return None, count
        if not log_due(step, cfg.train):
            return {}, count
        stats: dict[str, torch.Tensor | float] = {
            "train/value_loss": reduce.global_sum(loss, self.layout), "train/grad_norm": norms[0],
            **lr_metrics(self.state)}
        if not self.pairwise:
            stats["train/truncated_samples"] = streams.truncated_samples(batches, self.layout)
        if self.pairwise:
            stats["train/pairwise_accuracy"] = reduce.global_sum(acc, self.layout) / self.layout.world_size
        return stats, count

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        critic = self.critic.model.eval()
        finals, means, outcomes = [], [], []
        for batch in self.valid:
            values = critic(batch.tokens)
            finals.append(final_values(values, batch))
            means.append(mean_response_value(state_values(values), streams.response_mask(batch)))
            outcomes.append(batch.is_correct)
        critic.train()
        finals = reduce.gather_cat(torch.cat(finals).double(), self.layout)
        means = reduce.gather_cat(torch.cat(means).double(), self.layout)
        outcomes = reduce.gather_cat(torch.cat(outcomes).long(), self.layout).bool()
        ones = torch.ones_like(finals, dtype=torch.bool)
        metrics = {"val/critic_auc": roc_auc(finals, outcomes),
                   "val/critic_mean_value_auc": roc_auc(means, outcomes),
                   "val/pairwise_accuracy": pairwise_accuracy(means, outcomes),
                   "val/explained_variance": float(explained_variance(finals, outcomes.double(), ones))}
        if step == self.cfg.train.steps:  # the quality report: is the critic worth its name?
            metrics.update(critic_quality(self.cfg, self.critic.model, self.data, self.layout))
        return metrics

    def export(self) -> None:
        export_model(self.critic.model, self.cfg, self.layout, self.data.tokenizer, value_head=self.cfg.value_model.head)

    def train(self) -> dict[str, float]:
        return run_steps(self)

    def close(self) -> None:
        pass

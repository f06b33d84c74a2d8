"""Verifiable Critic WMTP: token weights from the critic's GAE advantages, and critic continual
learning with the PPO clipped value loss (docs/MATH.md, docs/DISTRIBUTED.md; the original system's stage 2).

One optimizer step, per micro-batch:
  experience (no grad, critic snapshot, `ExperienceScorer`):
      V_old = critic_snapshot(x);  A, G = GAE(V_old, R = is_correct, γ, λ)
  learner:
      Â = norm(A) over the global batch;  w = clip(exp(Â / T), min, max) (→ mean 1)
      L_policy = Σ_k c_k Σ_t w_{t+k} ℓ_k(t) M_k(t) / N_k            (weights detached)
      L_V = coef · mean(max((V_new − G)², (V_old + clip(V_new − V_old, ±ε) − G)²))
  the critic snapshot gets the learner's critic every `critic_sync_interval` steps.
The policy learns from correct solutions only (`data.samples=correct`) or all of them; the stream
draws every solution unless `data.draw` says otherwise (a study's arms draw the same batches).

Which critic scores (colocated; no replica, no gather): at `critic_sync_interval` 1 the learner's
own sharded critic under no_grad before its update (it IS the last published critic); at > 1 a
`CriticSnapshot` sharded like it, in the compute dtype, refreshed from local shards at each
publish and checkpointed with its version. A frozen critic (`stage2.value_loss.enabled=false`) has
no optimizer and scores as it is. `async` publishes the same model to the experience actors.
"""

from __future__ import annotations

from typing import Any

import torch

from wmtp.config.paths import export_dir
from wmtp.config.schema import WMTPConfig
from wmtp.data import streams
from wmtp.evaluation.critic_quality import critic_quality, near_chance_message
from wmtp.evaluation.metrics import (
    evaluate_generation,
    final_values,
    generation_eval_tasks,
    pairwise_accuracy,
    roc_auc,
    validate_policy,
)
from wmtp.losses.alignment import state_values
from wmtp.losses.mtp import mtp_cross_entropy
from wmtp.losses.value import (
    clipped_value_loss,
    explained_variance_from_moments,
    explained_variance_moments,
    mean_response_value,
)
from wmtp.parallel import reduce
from wmtp.parallel.build import critic_model, policy_model
from wmtp.parallel.export import export_model
from wmtp.parallel.fsdp import accumulate
from wmtp.recipes.experience import (
    CriticSnapshot,
    ExperienceFeed,
    ExperienceSpec,
    LearnerScorer,
    critic_experience,
)
from wmtp.recipes.interfaces import CheckpointSink, RecipeEnv
from wmtp.recipes.loop import (
    StepResult,
    head_metrics,
    log_due,
    run_steps,
    stat_tensors,
    step_capacity,
    weight_diagnostics,
)
from wmtp.tracking.base import MetricLogger
from wmtp.tracking.console import tell
from wmtp.tracking.heatmap import log_weight_heatmap
from wmtp.tracking.phases import timed
from wmtp.training.precision import autocast_context, compute_dtype
from wmtp.training.state import LoopState, lr_metrics, nonfinite_guard, resume_or_start, throughput_meter
from wmtp.training.step import (
    build_trainable,
    head_coefficients,
    n_heads_of,
    optimizer_step,
    step_denominators,
)
from wmtp.training.throughput import count_step
from wmtp.weighting.normalize import build_normalizer
from wmtp.weighting.shuffle import step_generator
from wmtp.weighting.weights import advantage_weights, position_advantages, value_weights


class VerifiableRecipe:
    def __init__(self, cfg: WMTPConfig, *, logger: MetricLogger, checkpoint_sink: CheckpointSink,
                 scorer_factory=None, env: RecipeEnv) -> None:
        self.cfg, self.logger, self.sink, self.env = cfg, logger, checkpoint_sink, env
        self.scorer_factory = scorer_factory
        self.quality: dict[str, float] = {}  # the critic's report before training, logged at every validation

    def setup(self) -> None:
        cfg, vw = self.cfg, self.cfg.stage2.value_weighting
        self.layout = self.env.layout
        self.data = self.env.load_data(cfg)
        self.learn_critic = cfg.stage2.value_loss.enabled
        policy = policy_model(cfg, self.data.tokenizer.vocab_size, self.layout, self.env.checkpoints)
        # A frozen critic gets no optimizer (and so no optimizer state in checkpoints).
        critic = critic_model(cfg, policy.args, self.layout, policy, requires_grad=self.learn_critic,
                              reader=self.env.checkpoints)
        self.n_heads = n_heads_of(policy)
        self.coefs = head_coefficients(cfg, self.n_heads)
        self.spec = ExperienceSpec("verifiable", critic.args, cfg.value_model.head, vw.gae_gamma, vw.gae_lambda,
                                   vw.reward, cfg.train.loss_chunk_size, cfg.train.precision)
        self.policy = build_trainable(policy, cfg, cfg.optim.lr, self.layout)
        self.critic_model = critic
        trainables: dict[str, Any] = {"policy": self.policy}
        if self.learn_critic:
            self.critic = trainables["critic"] = build_trainable(self.critic_model, cfg, cfg.optim.critic_lr, self.layout)
        # Scores between publishes when they are further apart than one step (checkpointed).
        self.snapshot = (CriticSnapshot(self.critic_model, compute_dtype(cfg.train.precision))
                         if self.learn_critic and cfg.stage2.critic_sync_interval > 1 else None)
        self.normalizer = build_normalizer(vw.td_error_normalization, momentum=vw.ema_momentum,
                                           warmup_steps=vw.ema_warmup_steps)
        # By default the stream draws every solution (`data.draw`); the policy mask picks what it learns from.
        stream = streams.train_stream(self.data.train, cfg, self.layout, samples=streams.drawn_samples(cfg))
        self.scorer = (self.scorer_factory(self.spec, None) if self.scorer_factory is not None
                       else LearnerScorer(self.spec, self.published_critic()))
        self.feed = ExperienceFeed(stream, self.scorer, 0 if self.scorer_factory is None
                                   else cfg.orchestration.queue_depth)
        self.valid = streams.valid_batches(self.data.valid, cfg, self.layout)
        self.meter = throughput_meter(policy, cfg, self.layout)
        self.gen_tasks = generation_eval_tasks(cfg) if cfg.train.eval_generate_every else []
        stateful: dict[str, Any] = {"normalizer": self.normalizer} if hasattr(self.normalizer, "state_dict") else {}
        models = {}
        if self.snapshot is not None:
            stateful["critic_snapshot"] = self.snapshot
            models["critic_snapshot"] = self.snapshot.model
        self.state = LoopState(self.feed, nonfinite_guard(cfg, self.sink), self.meter, trainables, stateful,
                               models)
        self.start = resume_or_start(self.state, cfg, self.sink, self.logger, self.layout)
        # The experience side scores with the published critic of step `start` (restored).
        self.scorer.publish_critic(self.published_critic(), self.critic_version(self.start))

    def published_critic(self):
        """The critic the experience side scores with: the snapshot, else the learner's critic."""
        return self.snapshot.model if self.snapshot is not None else self.critic_model

    def critic_version(self, step: int) -> int:
        """Critic versions are publishes: after `step` steps the experience side holds version
        `step // critic_sync_interval`; staleness (logged, bounded by `stage2.max_staleness`) counts
        versions a scored batch lags behind the learner's last publish."""
        return step // self.cfg.stage2.critic_sync_interval if self.learn_critic else 0

    def weights(self, advantages: torch.Tensor, mask: torch.Tensor, update: bool, global_stats: bool = True):
        """Target-indexed token weights `[B, S]` from GAE advantages `[B, S]` (normaliser and
        renormalisation statistics over all ranks unless `global_stats=False`)."""
        vw = self.cfg.stage2.value_weighting
        return advantage_weights(advantages, mask, vw.weight_temperature, vw.weight_clip_min,
                                 vw.weight_clip_max, vw.renormalize, self.normalizer, update=update,
                                 reduce_fn=reduce.reduce_fn(self.layout) if global_stats else None,
                                 reduce_max_fn=reduce.reduce_max_fn(self.layout) if global_stats else None)

    def advantages(self, scored_batches) -> list[torch.Tensor]:
        """Each micro-batch's advantages `[B, S]`: the critic's GAE, or (`source: position`, the
        position-only control) `position_advantages` with V ≡ the critic's mean value over the
        response states of the step's global batch."""
        vw = self.cfg.stage2.value_weighting
        if vw.source != "position":
            return [s.advantages for s in scored_batches]
        responses = [s.batch.labels != -100 for s in scored_batches]
        totals = reduce.global_sum(torch.stack([
            sum((s.values_old.double() * r).sum() for s, r in zip(scored_batches, responses)),
            sum(r.sum() for r in responses).double()]), self.layout)
        mean = totals[0] / totals[1].clamp_min(1.0)
        return [position_advantages(s.values_old, r, s.batch.is_correct, mean, vw.gae_gamma, vw.gae_lambda,
                                    vw.reward, truncated=s.batch.truncated)
                for s, r in zip(scored_batches, responses)]

    def step_weights(self, scored_batches, labels, step: int = 0):
        """Weights of every micro-batch of the step (`weighting.weights.value_weights`) from ONE
        normalisation over the global batch (all micro-batches, all ranks), so grad accumulation
        does not change them; the EMA normaliser is updated once per step. Also returns their
        statistics (`train/weights/*`; the step adds the diagnostics on logging steps)."""
        vw = self.cfg.stage2.value_weighting
        mask = streams.stack_padded([lab != -100 for lab in labels])
        advantages = None if vw.source == "uniform" else streams.stack_padded(self.advantages(scored_batches))
        w, wstats = value_weights(vw, advantages, mask, normalizer=self.normalizer, update=True,
                                  reduce_fn=reduce.reduce_fn(self.layout),
                                  reduce_max_fn=reduce.reduce_max_fn(self.layout),
                                  generator=step_generator(self.cfg.run.seed, self.layout.rank, step) if vw.shuffle else None)
        return streams.split_padded(w, [lab.shape for lab in labels]), stat_tensors("train/weights", wstats)

    def step(self, step: int) -> StepResult:
        cfg, vl = self.cfg, self.cfg.stage2.value_loss
        policy, critic = self.policy.model, self.critic_model
        scored_batches = [self.feed.next() for _ in range(cfg.data.grad_accum)]
        labels = [streams.policy_labels(s.batch, cfg.data.samples) for s in scored_batches]
        count = count_step([s.batch.attention_mask for s in scored_batches], labels)
        denom = step_denominators(labels, self.n_heads, self.layout)
        resp = [streams.response_mask(s.batch) for s in scored_batches]
        value_denom = reduce.global_sum(sum(r.sum() for r in resp).double(), self.layout)  # type: ignore[union-attr]  # resp is not empty
        dev = self.layout.device
        loss, ce, wce = (torch.zeros((), device=dev), torch.zeros(self.n_heads, dtype=torch.float64, device=dev),
                         torch.zeros(self.n_heads, dtype=torch.float64, device=dev))
        # value loss (a sum of global-denominator shares), clipped-token count and the moments of
        # the explained variance: sums over micro-batches and ranks, so both are global exactly
        vstats = torch.zeros(2, dtype=torch.float64, device=dev)
        ev_moments = torch.zeros(5, dtype=torch.float64, device=dev)
        step_weights, weight_metrics = self.step_weights(scored_batches, labels, step)
        micro = list(zip(scored_batches, labels, resp, step_weights))
        for scored, lab, rmask, w in accumulate([policy, critic], micro):
            batch = scored.batch
            with autocast_context(dev.type, cfg.train.precision):
                out = policy(batch.tokens)
                res = mtp_cross_entropy(out.hidden, policy.output.weight, lab, weights=w,  # type: ignore[union-attr]  # a policy has its output projection
                                        head_coefficients=self.coefs, denominators=denom,
                                        chunk_size=cfg.train.loss_chunk_size)
                total = res.loss
                if self.learn_critic:
                    v_new = critic(batch.tokens)
                    vloss = clipped_value_loss(state_values(v_new), state_values(scored.values_old),  # type: ignore[arg-type]  # a critic-scored batch has V_old and returns
                                               scored.returns, rmask, vl.coefficient, vl.clip_range,  # type: ignore[arg-type]  # (as above)
                                               denominator=value_denom)
                    total = total + vloss.loss
                    vstats += torch.stack([vloss.loss.detach().double(),
                                           vloss.clip_fraction.double() * rmask.sum().double()])
                    ev_moments += explained_variance_moments(state_values(scored.values_old), scored.returns,  # type: ignore[arg-type]  # (as above)
                                                             rmask)
            total.backward()
            loss += total.detach()
            ce += res.ce_per_head.double()
            wce += res.weighted_ce_per_head.double()
        parts = [self.policy, self.critic] if self.learn_critic else [self.policy]
        norms = optimizer_step(parts, loss, cfg, self.layout, self.state.guard, step)
        self.state.settle(accepted=norms is not None)  # the EMA moves only on an accepted step
        if self.learn_critic and step % cfg.stage2.critic_sync_interval == 0:
            if self.snapshot is not None:
                self.snapshot.refresh(critic, self.critic_version(step))
            self.scorer.publish_critic(self.published_critic(), self.critic_version(step))
        if norms is None:
            return None, count
        if not log_due(step, cfg.train):
            return {}, count
        masks = [lab != -100 for lab in labels]
        stats = {"train/loss": reduce.global_sum(loss, self.layout),
                 **head_metrics("train/ce", reduce.global_sum(ce, self.layout)),
                 **head_metrics("train/weighted_ce", reduce.global_sum(wce, self.layout)),
                 "train/grad_norm": norms[0], **lr_metrics(self.state),
                 **weight_metrics,
                 # of the weights as applied (shuffle included), over the global batch
                 **weight_diagnostics(streams.stack_padded(step_weights), streams.stack_padded(masks), self.layout,
                                      step_capacity(cfg)),
                 # the stalest micro-batch of any rank (the bound `stage2.max_staleness` is about)
                 "train/critic_staleness": reduce.global_max_value(
                     max(self.critic_version(step - 1) - s.critic_version for s in scored_batches), self.layout),
                 "train/truncated_samples": streams.truncated_samples([s.batch for s in scored_batches], self.layout),
                 **self.rank_metrics(count, step_weights, masks)}
        if self.learn_critic:
            vstats = reduce.global_sum(vstats, self.layout)
            stats.update({"train/value_loss": vstats[0],
                          "train/value_clip_fraction": vstats[1] / value_denom.clamp_min(1.0),
                          "train/explained_variance": explained_variance_from_moments(
                              reduce.global_sum(ev_moments, self.layout)),
                          "train/critic_grad_norm": norms[1]})
        return stats, count

    def rank_metrics(self, count, step_weights, masks) -> dict[str, torch.Tensor]:
        """Per-rank values (`worker/<r>/...`, 2+ ranks) that find a straggler or a skewed shard: the
        real tokens this rank learned from this step, its weighted targets and their mean weight
        (global `train/weights/mean` = Σ_r targets_r · mean_r / Σ_r targets_r)."""
        targets = sum(m.sum() for m in masks).double()
        weight_sum = sum((w.double() * m).sum() for w, m in zip(step_weights, masks))
        return reduce.per_rank_values({"train/tokens": count[0], "train/weights/targets": targets,
                                       "train/weights/mean": weight_sum / targets.clamp_min(1)}, self.layout)

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """The critic's quality report before training (`check_critic`), unweighted CE per head,
        critic AUC (value of the last trained state V_{e−1} vs R), pairwise accuracy (mean state
        values), and a token-weight heatmap."""
        cfg, vw = self.cfg, self.cfg.stage2.value_weighting
        generated = evaluate_generation(self.policy.model, self.data.tokenizer, self.gen_tasks, cfg,
                                        self.layout, step)
        metrics = {**self.quality,
                   **(generated | validate_policy(self.policy.model, self.valid, cfg, self.layout, cfg.data.samples))}
        critic = self.critic_model.eval()
        finals, means, outcomes = [], [], []
        for batch in self.valid:
            scored = critic_experience(critic, batch, gamma=vw.gae_gamma, lam=vw.gae_lambda,
                                       reward_mode=vw.reward, version=step)
            finals.append(final_values(scored.values_old, batch))  # type: ignore[arg-type]  # critic_experience sets V_old
            means.append(mean_response_value(state_values(scored.values_old), streams.response_mask(batch)))  # type: ignore[arg-type]  # (as above)
            outcomes.append(batch.is_correct)
        critic.train()
        finals = reduce.gather_cat(torch.cat(finals), self.layout)
        means = reduce.gather_cat(torch.cat(means).double(), self.layout)
        outcomes = reduce.gather_cat(torch.cat(outcomes).long(), self.layout).bool()
        metrics["val/critic_auc"] = roc_auc(finals, outcomes)
        metrics["val/pairwise_accuracy"] = pairwise_accuracy(means, outcomes)
        if self.layout.is_main and cfg.train.heatmap_samples:
            w, _ = self.weights(scored.advantages, streams.response_mask(batch), update=False, global_stats=False)  # type: ignore[arg-type]  # and the advantages
            log_weight_heatmap(self.logger, self.data.tokenizer, batch, w, step, cfg.train.heatmap_samples,
                               f"verifiable token weights, step {step}")
        return metrics

    def check_critic(self) -> dict[str, float]:
        """The critic's quality report before training (logged with every validation); one line on
        the console when it is near chance (thresholds `value_model.quality_*`)."""
        quality = critic_quality(self.cfg, self.published_critic(), self.data, self.layout, with_weights=True)
        message = near_chance_message(quality, self.cfg, "the critic")
        if message and self.layout.is_main:
            tell(self.logger, message)
        return quality

    def export(self) -> None:
        export_model(self.policy.model, self.cfg, self.layout, self.data.tokenizer)
        if self.learn_critic:  # the critic it ended with (continual learning), beside the policy
            export_model(self.critic.model, self.cfg, self.layout, value_head=self.cfg.value_model.head,
                         out=critic_export_dir(self.cfg))

    def train(self) -> dict[str, float]:
        with timed("validation"):
            self.quality = self.check_critic()  # of the critic this attempt starts from
        return run_steps(self)

    def close(self) -> None:
        # A setup() that failed part-way leaves no scorer: close what exists, hide nothing.
        if getattr(self, "scorer", None) is not None:
            self.scorer.close()


def critic_export_dir(cfg: WMTPConfig):
    """`<run_dir>/export_critic`: the critic a verifiable run with continual learning ended with."""
    return export_dir(cfg).with_name("export_critic")

"""Rho-1 Weighted MTP: token weights from the excess loss over a frozen reference (docs/MATH.md).

  e_k(t) = ℓ_k^policy(t) − ℓ^ref(t+k)
  topk:        keep the top `ratio` of valid head-k targets of the global batch by e (mean weight 1)
  continuous:  w = clip(exp(zscore_k(e) / T), min, max)
  L = Σ_k c_k Σ_t W_k(t) ℓ_k(t) M_k(t) / N_k

ℓ^ref comes precomputed (`wmtp data score-reference`, `data.reference_losses`) or from a live
reference (`rho1.reference`, the ref_tuning export) in the experience phase. The policy's own
per-token losses come from the same forward as the loss (no second policy forward).
"""

from __future__ import annotations

import torch

from wmtp.config.schema import WMTPConfig
from wmtp.data import streams
from wmtp.evaluation.decisive import decisive_weight_auc
from wmtp.evaluation.metrics import evaluate_generation, generation_eval_tasks, validate_policy
from wmtp.losses.alignment import valid_mask
from wmtp.losses.mtp import mtp_cross_entropy, mtp_token_losses
from wmtp.parallel import reduce
from wmtp.parallel.build import builds_sharded, from_rank0, materialize, policy_model, sharded_from_rank0
from wmtp.parallel.export import export_model
from wmtp.parallel.fsdp import accumulate
from wmtp.recipes.experience import (
    ExperienceFeed,
    ExperienceSpec,
    LearnerScorer,
    PrecomputedReferenceLosses,
    frozen_scoring_model,
    reference_token_losses,
)
from wmtp.recipes.interfaces import CheckpointSink, RecipeEnv, ScoredBatch
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
from wmtp.tracking.heatmap import log_weight_heatmap
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
from wmtp.weighting.rho1 import rho1_weights, step_rho1_stats
from wmtp.weighting.shuffle import shuffle_within_rows, step_generator


class PrecomputedScorer:
    """`ExperienceScorer` over stored reference losses (a table lookup per batch)."""

    def __init__(self, table: PrecomputedReferenceLosses):
        self.table = table
        self._ready: list[ScoredBatch] = []

    def submit(self, batch) -> None:
        self._ready.append(ScoredBatch(batch, ref_losses=self.table.lookup(batch)))

    def get(self) -> ScoredBatch:
        return self._ready.pop(0)

    def in_flight(self) -> list[ScoredBatch]:
        return list(self._ready)

    def resume_in_flight(self, scored: ScoredBatch) -> None:
        self._ready.append(scored)

    def publish_critic(self, state_dict, version: int) -> None:
        """The reference is frozen: nothing to publish."""

    def close(self) -> None:
        self._ready.clear()


class Rho1WeightedRecipe:
    def __init__(self, cfg: WMTPConfig, *, logger: MetricLogger, checkpoint_sink: CheckpointSink,
                 scorer_factory=None, env: RecipeEnv) -> None:
        self.cfg, self.logger, self.sink, self.env = cfg, logger, checkpoint_sink, env
        self.scorer_factory = scorer_factory

    def setup(self) -> None:
        cfg = self.cfg
        self.layout = self.env.layout
        self.data = self.env.load_data(cfg)
        policy = policy_model(cfg, self.data.tokenizer.vocab_size, self.layout, self.env.checkpoints)
        self.n_heads = n_heads_of(policy)
        self.coefs = head_coefficients(cfg, self.n_heads)
        self.policy = build_trainable(policy, cfg, cfg.optim.lr, self.layout)
        self.scorer = self.build_scorer()
        stream = streams.train_stream(self.data.train, cfg, self.layout, samples=streams.drawn_samples(cfg))
        depth = cfg.orchestration.queue_depth if self.scorer_factory is not None else 0
        self.feed = ExperienceFeed(stream, self.scorer, depth)
        self.valid = streams.valid_batches(self.data.valid, cfg, self.layout)
        self.meter = throughput_meter(policy, cfg, self.layout)
        self.gen_tasks = generation_eval_tasks(cfg) if cfg.train.eval_generate_every else []
        self.state = LoopState(self.feed, nonfinite_guard(cfg, self.sink), self.meter, {"policy": self.policy})
        self.start = resume_or_start(self.state, cfg, self.sink, self.logger, self.layout)

    def build_scorer(self):
        """Precomputed losses when configured; else a live frozen reference (colocated or actors)."""
        cfg = self.cfg
        if cfg.data.reference_losses:
            return PrecomputedScorer(PrecomputedReferenceLosses(cfg.data.reference_losses, cfg.data.max_seq_len))
        if self.scorer_factory is None and builds_sharded(cfg, self.layout):
            return LearnerScorer(*self.sharded_reference())
        # Frozen: no optimizer; read in the compute dtype, scored under the learner's autocast.
        reference = self.env.checkpoints.load_model(materialize(cfg.rho1.reference, cfg), device="cpu",
                               dtype=compute_dtype(cfg.train.precision))
        spec = ExperienceSpec("rho1", reference.args, chunk_size=cfg.train.loss_chunk_size,
                              precision=cfg.train.precision)
        if self.scorer_factory is not None:
            scorer = self.scorer_factory(spec, None)
            scorer.publish_critic(reference, 0)  # once: the reference never changes
            return scorer
        return LearnerScorer(spec, frozen_scoring_model(reference, cfg.train.precision, self.layout.device))

    def sharded_reference(self):
        """(spec, reference) under FSDP2: the reference is built on the meta device in the compute
        dtype, sharded over the learners' mesh, and filled from `rho1.reference` read by rank 0
        alone, one tensor at a time (`wmtp.parallel.materialize`), like the policy."""
        from wmtp.model.transformer import build_model
        from wmtp.parallel.fsdp import apply_fsdp, fsdp_mesh

        cfg, layout, reader = self.cfg, self.layout, self.env.checkpoints

        def shapes():
            folder = materialize(cfg.rho1.reference, cfg)
            return folder, reader.read_checkpoint_args(folder)
        folder, args = from_rank0(shapes, layout)
        model = build_model(args, device="meta")
        frozen_scoring_model(model, cfg.train.precision, torch.device("meta"))  # no grad, compute dtype
        mesh = fsdp_mesh(layout.device.type, layout.world_size, cfg.orchestration.fsdp_replicas)

        def source():
            return reader.read_model_state(folder, args)[1].pop
        reference = sharded_from_rank0(model, lambda m: apply_fsdp(m, mesh=mesh, mixed_precision=False), source,
                                       layout)
        spec = ExperienceSpec("rho1", args, chunk_size=cfg.train.loss_chunk_size, precision=cfg.train.precision)
        return spec, reference.eval()

    def weights(self, policy_losses, ref_losses, labels, global_stats: bool = True):
        r = self.cfg.rho1
        dist_kw = ({"gather_fn": lambda x: self.env.gather_cat(x, self.layout), "reduce_fn": reduce.reduce_fn(self.layout)}
                   if global_stats else {})
        return rho1_weights(policy_losses, ref_losses, labels, mode=r.mode, ratio=r.ratio,
                            keep_first_head=r.keep_first_head, temperature=r.temperature, clip_min=r.clip_min,
                            clip_max=r.clip_max, **dist_kw)

    def step(self, step: int) -> StepResult:
        cfg, policy, dev = self.cfg, self.policy.model, self.layout.device
        fed = [self.feed.next() for _ in range(cfg.data.grad_accum)]
        labels = [streams.policy_labels(s.batch, cfg.data.samples) for s in fed]
        count = count_step([s.batch.attention_mask for s in fed], labels)
        denom = step_denominators(labels, self.n_heads, self.layout)
        loss = torch.zeros((), device=dev)
        ce = torch.zeros(self.n_heads, dtype=torch.float64, device=dev)
        wce = torch.zeros(self.n_heads, dtype=torch.float64, device=dev)
        rho1_parts = []  # (stats, valid targets) per micro-batch → the step's global statistics
        head1 = []  # (weights, valid) of head 1 per micro-batch → the step's weight diagnostics
        for micro, (scored, lab) in accumulate([policy], list(enumerate(zip(fed, labels)))):
            with autocast_context(dev.type, cfg.train.precision):
                out = policy(scored.batch.tokens)
                policy_losses = mtp_token_losses(out.hidden, policy.output.weight, lab, cfg.train.loss_chunk_size)  # type: ignore[union-attr]  # a policy has its output projection
                w, rstats = self.weights(policy_losses, scored.ref_losses, lab)
                valid = valid_mask(lab, self.n_heads)
                rho1_parts.append((rstats, valid.sum((0, 1))))
                if cfg.rho1.shuffle:  # control: the same weights at random places of each row
                    w = shuffle_within_rows(w, valid, step_generator(
                        cfg.run.seed, self.layout.rank, step * cfg.data.grad_accum + micro))
                head1.append((w[..., 0], valid[..., 0]))
                res = mtp_cross_entropy(out.hidden, policy.output.weight, lab, weights=w,  # type: ignore[union-attr]  # a policy has its output projection
                                        head_coefficients=self.coefs, denominators=denom,
                                        chunk_size=cfg.train.loss_chunk_size)
            res.loss.backward()
            loss += res.loss.detach()
            ce += res.ce_per_head.double()
            wce += res.weighted_ce_per_head.double()
        norms = optimizer_step([self.policy], loss, cfg, self.layout, self.state.guard, step)
        if norms is None:
            return None, count
        if not log_due(step, cfg.train):
            return {}, count
        return {"train/loss": reduce.global_sum(loss, self.layout),
                **head_metrics("train/ce", reduce.global_sum(ce, self.layout)),
                **head_metrics("train/weighted_ce", reduce.global_sum(wce, self.layout)),
                "train/grad_norm": norms[0], **lr_metrics(self.state),
                # over the step's global batch (every micro-batch, every rank), as docs/MATH.md says
                **stat_tensors("train/rho1", step_rho1_stats(rho1_parts, reduce.reduce_fn(self.layout))),
                # head 1's weights as applied (shuffle included), pooled over the global batch
                **weight_diagnostics(streams.stack_padded([w for w, _ in head1]),
                                     streams.stack_padded([v for _, v in head1]), self.layout,
                                     step_capacity(cfg)),
                **self.rank_metrics(count, rho1_parts)}, count

    def rank_metrics(self, count, rho1_parts) -> dict[str, torch.Tensor]:
        """Per-rank values (`worker/<r>/...`, 2+ ranks) that find a straggler or a skewed shard: the
        real tokens this rank learned from this step, and its head-1 targets and their mean excess
        loss over the reference (global `train/rho1/mean_excess/head1` = Σ_r n_r · e_r / Σ_r n_r)."""
        mine = step_rho1_stats(rho1_parts)  # this rank's micro-batches only
        targets = sum(n[0] for _, n in rho1_parts).double()
        return reduce.per_rank_values({"train/tokens": count[0], "train/rho1/targets/head1": targets,
                                       "train/rho1/mean_excess/head1": mine.mean_excess[0]}, self.layout)

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        cfg, policy = self.cfg, self.policy.model
        generated = evaluate_generation(self.policy.model, self.data.tokenizer, self.gen_tasks, cfg,
                                        self.layout, step)
        metrics = generated | validate_policy(policy, self.valid, cfg, self.layout, cfg.data.samples)
        if isinstance(self.scorer, LearnerScorer):  # a live reference here: the weights' decisive-token AUC
            reference, shuffle = self.scorer.model, step_generator(cfg.run.seed, self.layout.rank, step)
            metrics |= decisive_weight_auc(self.data.valid, self.data.tokenizer,
                                           lambda batch: target_weights(cfg, policy, reference, batch, shuffle),
                                           batch_size=cfg.data.batch_size, layout=self.layout)
        # Heatmap with the colocated live reference (stored losses cover training rows only).
        # Every rank runs the forward (a sharded policy needs all ranks); rank 0 logs.
        if cfg.train.heatmap_samples and isinstance(self.scorer, LearnerScorer):
            batch = self.valid[0]
            ref = reference_token_losses(self.scorer.model, batch,  # type: ignore[arg-type]  # the reference
                                         cfg.train.loss_chunk_size)
            out = policy(batch.tokens)
            lab = streams.policy_labels(batch, "all")
            w, _ = self.weights(mtp_token_losses(out.hidden, policy.output.weight, lab), ref, lab,  # type: ignore[union-attr]  # a policy has its output projection
                                global_stats=False)
            if self.layout.is_main:
                log_weight_heatmap(self.logger, self.data.tokenizer, batch, w, step, cfg.train.heatmap_samples,
                                   f"rho1 token weights (head 1), step {step}")
        return metrics

    def export(self) -> None:
        export_model(self.policy.model, self.cfg, self.layout, self.data.tokenizer)

    def train(self) -> dict[str, float]:
        return run_steps(self)

    def close(self) -> None:
        # A setup() that failed part-way leaves no scorer: close what exists, hide nothing.
        if getattr(self, "scorer", None) is not None:
            self.scorer.close()


@torch.no_grad()
def target_weights(cfg: WMTPConfig, policy, reference, batch, generator: torch.Generator | None = None) -> torch.Tensor:
    """Head 1's Rho-1 weights of every response target of `batch` as `cfg.rho1` sets them, with
    this batch's statistics, target-indexed `[B, S]` (0 off the response): the weights as a
    diagnostic (the recipe's `weights/decisive_auc`, the study's measures). `generator`: the
    shuffled control's permutation (`rho1.shuffle`)."""
    r = cfg.rho1
    ref_losses = reference_token_losses(reference, batch, cfg.train.loss_chunk_size)
    out = policy(batch.tokens)
    losses = mtp_token_losses(out.hidden, policy.output.weight, batch.labels, cfg.train.loss_chunk_size)
    W, _ = rho1_weights(losses, ref_losses, batch.labels, mode=r.mode, ratio=r.ratio, keep_first_head=r.keep_first_head,
                        temperature=r.temperature, clip_min=r.clip_min, clip_max=r.clip_max)
    if r.shuffle and generator is not None:
        W = shuffle_within_rows(W, valid_mask(batch.labels, losses.shape[-1]), generator)
    mask = batch.labels != -100
    w = torch.zeros(mask.shape, dtype=W.dtype, device=W.device)
    w[:, 1:] = W[:, :-1, 0]  # head 1 at position t predicts token t + 1
    return torch.where(mask, w, torch.zeros_like(w))


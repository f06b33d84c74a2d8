"""Parts every recipe composes: run identity, models, data streams, optimisers, distributed sums,
validation, and the checkpoint write/read pair. Recipes call these; they do not inherit.

Distributed: when `torch.distributed` is initialised (Ray Train workers), models are sharded with
FSDP2 (`orchestration.fsdp`) or replicated with summed gradients, data is sharded by rank, and
every loss denominator is a global sum. Without a process group the same code runs one process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from wmtp.config.paths import export_dir
from wmtp.config.schema import WMTPConfig
from wmtp.data.collator import Batch
from wmtp.data.dataset import TrainingData
from wmtp.data.samplers import Sampler
from wmtp.losses.alignment import count_valid_targets
from wmtp.losses.mtp import mtp_cross_entropy
from wmtp.model.args import ModelArgs, get_preset
from wmtp.model.transformer import Transformer, build_model
from wmtp.model.value import ValueModel, build_value_model, value_args_from_policy
from wmtp.parallel.gather import gather_state_dict
from wmtp.parallel.reduce import DistEnv
from wmtp.parallel.reduce import global_sum as reduce_global_sum
from wmtp.training.optim import build_optimizer
from wmtp.training.schedule import build_scheduler

# ---------------------------------------------------------------------------------------------
# Process layout and global sums


def process_layout(use_gpu: bool = False) -> DistEnv:
    """This process's rank, world size and device (`wmtp.parallel.reduce.DistEnv`): the GPU of
    `LOCAL_RANK` when asked for and present, else the CPU."""
    env = DistEnv.from_env("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    return env


def global_sum(x: Tensor, layout: DistEnv) -> Tensor:
    """All-reduce SUM across ranks of a copy (`x` itself in one process). Float64/long stay exact."""
    return reduce_global_sum(x) if layout.distributed else x


def reduce_fn(layout: DistEnv):
    """The `reduce_fn` callback of the weighting math (None when there is nothing to reduce)."""
    return (lambda t: global_sum(t, layout)) if layout.distributed else None


def global_max_value(x: float, layout: DistEnv) -> float:
    """The largest `x` over ranks (a host number, e.g. the stalest micro-batch of the step)."""
    if not layout.distributed:
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64, device=layout.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def per_rank_values(values: dict[str, Tensor | float], layout: DistEnv) -> dict[str, Tensor]:
    """Every rank's `values` (0-dim, this rank's own) under per-rank names `rank/<r>/<name>`, on
    every rank (one all_gather of a float64 vector: every rank calls it, with the same keys).
    `{}` in one process, where the global values are the rank's (docs/TRACKING.md lists them)."""
    if not layout.distributed:
        return {}
    keys = list(values)
    mine = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=layout.device).reshape(())
                        for k in keys])
    parts = [torch.empty_like(mine) for _ in range(layout.world_size)]
    dist.all_gather(parts, mine)
    return {f"rank/{r}/{k}": parts[r][i] for r in range(layout.world_size) for i, k in enumerate(keys)}


def reduce_max_fn(layout: DistEnv):
    """All-reduce MAX of a copy (the weighting math's `reduce_max_fn`; None in one process)."""
    if not layout.distributed:
        return None

    def reduce_max(t: Tensor) -> Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out
    return reduce_max


# ---------------------------------------------------------------------------------------------
# Models


def policy_args(cfg: WMTPConfig, vocab_size: int | None = None, checkpoint: str | Path | None = None) -> ModelArgs:
    """The policy's shapes. Without a checkpoint: preset → `model.params` → head count → the
    tokenizer's vocab. With one (`checkpoint`, or a local `model.checkpoint`): the checkpoint's
    params.json reconciled with `model.params`/`model.n_future_tokens` (docs/MODEL.md rule)."""
    from wmtp.config.loader import ConfigError

    changes = dict(cfg.model.params)
    if cfg.model.n_future_tokens:
        changes["n_future_tokens"] = cfg.model.n_future_tokens
    if checkpoint is None and cfg.model.checkpoint and "://" not in cfg.model.checkpoint:
        checkpoint = Path(cfg.model.checkpoint).expanduser()
    if checkpoint is not None:
        from wmtp.model.checkpoint import read_checkpoint_args, reconcile_args

        args = reconcile_args(read_checkpoint_args(checkpoint), changes, checkpoint,
                              what="model.params / model.n_future_tokens")
        if vocab_size is not None and vocab_size > args.vocab_size:
            raise ConfigError(f"model.tokenizer has {vocab_size} pieces but the checkpoint {checkpoint} has "
                              f"vocab_size={args.vocab_size}; use the tokenizer it was trained with")
    else:
        if vocab_size is not None and "vocab_size" not in changes:
            changes["vocab_size"] = vocab_size
        try:
            args = get_preset(cfg.model.preset).replace(**changes)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.params / model.n_future_tokens: {e}") from None
    if cfg.data.max_seq_len > args.max_seq_len:
        raise ConfigError(f"data.max_seq_len={cfg.data.max_seq_len} exceeds the model's max_seq_len="
                          f"{args.max_seq_len}; lower it or set model.params.max_seq_len")
    return args


def critic_args(cfg: WMTPConfig, args: ModelArgs) -> ModelArgs:
    """A critic backbone as deep as the policy trunk (or `value_model.n_layers`), one output."""
    vargs = value_args_from_policy(args)
    return vargs.replace(n_layers=cfg.value_model.n_layers) if cfg.value_model.n_layers else vargs


def build_policy(cfg: WMTPConfig, vocab_size: int | None, device: torch.device) -> Transformer:
    """From `model.checkpoint` when given (local folder or s3:// URI), reconciled with the config
    (`policy_args`), else initialised from the seed. Logs the shapes it built from a checkpoint."""
    if cfg.model.checkpoint:
        from wmtp.model.checkpoint import describe_args, load_model

        folder = materialize(cfg.model.checkpoint, cfg)
        args = policy_args(cfg, vocab_size, checkpoint=folder)
        model = load_model(folder, device=device, args=args)
        if DistEnv.from_env("cpu").is_main:
            print(f"[wmtp] policy from {cfg.model.checkpoint}: {describe_args(args)}", flush=True)
        return model
    return build_model(policy_args(cfg, vocab_size), device=device, seed=cfg.run.seed)


def build_critic(cfg: WMTPConfig, args: ModelArgs, device: torch.device,
                 policy: Transformer | None = None) -> ValueModel:
    """From `value_model.checkpoint`, else a backbone as deep as the policy trunk (optionally
    initialised from it)."""
    if cfg.value_model.checkpoint:
        from wmtp.model.checkpoint import load_value_model

        return load_value_model(materialize(cfg.value_model.checkpoint, cfg), device=device)
    critic = build_value_model(critic_args(cfg, args), cfg.value_model.head, device=device, seed=cfg.run.seed + 1)
    if policy is not None and cfg.value_model.init_from_policy:
        critic.init_from_policy(policy)
    return critic


def builds_sharded(cfg: WMTPConfig, layout: DistEnv) -> bool:
    """Distributed with FSDP2: models are built on the meta device, sharded, then loaded
    (`wmtp.parallel.materialize`); otherwise built whole on the device, as in one process."""
    return layout.distributed and cfg.orchestration.fsdp


def policy_model(cfg: WMTPConfig, vocab_size: int | None, layout: DistEnv) -> Transformer:
    """The policy as the recipe trains it: `build_policy`'s weights, activation checkpointing and,
    when distributed, FSDP2 (`shard_model`) or the same weights on every rank.

    FSDP2: built on the meta device, sharded, then each rank's shards are filled from full tensors
    made one at a time on rank 0: read from `model.checkpoint` by rank 0 alone (the others read
    no file: rank 0 broadcasts the shapes), or initialised from `run.seed` (the same full weights as
    `build_policy`). docs/DISTRIBUTED.md "Loading"."""
    if not builds_sharded(cfg, layout):
        policy = build_policy(cfg, vocab_size, layout.device)
        sync_parameters(policy, layout)
        return shard_model(policy, cfg, layout)
    from wmtp.parallel.materialize import build_sharded, seeded_tensors

    # Rank 0 alone pulls and reads the checkpoint folder; the others get its shapes from rank 0.
    folder, args = from_rank0(lambda: _policy_source(cfg, vocab_size), layout)
    model = build_model(args, device="meta")
    if folder is not None:
        from wmtp.model.checkpoint import describe_args, read_model_state

        def source():
            return read_model_state(folder, args)[1].pop
        if layout.is_main:
            print(f"[wmtp] policy from {cfg.model.checkpoint}: {describe_args(args)}", flush=True)
    else:
        def source():
            return seeded_tensors(model, cfg.run.seed, layout.device)
    return build_sharded(model, lambda m: shard_model(m, cfg, layout), layout.device,
                         source if layout.is_main else None)


def source_policy(cfg: WMTPConfig, vocab_size: int | None, layout: DistEnv) -> Transformer:
    """A policy read only to start another model from (the critic recipe's `init_from_policy`),
    never trained: sharded like the critic will be under FSDP2 (`policy_model`), else whole on
    the host, so a single GPU never holds it."""
    if builds_sharded(cfg, layout):
        return policy_model(cfg, vocab_size, layout)
    return build_policy(cfg, vocab_size, torch.device("cpu"))


def _policy_source(cfg: WMTPConfig, vocab_size: int | None) -> tuple[Path | None, ModelArgs]:
    folder = materialize(cfg.model.checkpoint, cfg) if cfg.model.checkpoint else None
    return folder, policy_args(cfg, vocab_size, checkpoint=folder)


def from_rank0(fn, layout: DistEnv):
    """`fn()` run on rank 0 and its result broadcast to every rank (an error it raises, e.g. a
    ConfigError naming a key, is raised on every rank, so none waits forever)."""
    box: list[Any] = [None, None]
    if layout.is_main:
        try:
            box[0] = fn()
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            box[1] = e
    if layout.distributed:
        dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


def critic_model(cfg: WMTPConfig, args: ModelArgs, layout: DistEnv, policy: Transformer | None = None,
                 requires_grad: bool = True) -> ValueModel:
    """The critic as the recipe holds it (`build_critic`'s weights, `requires_grad` as given),
    sharded like `policy_model`: from `value_model.checkpoint` read by rank 0 alone, or from
    `run.seed + 1`, then (no checkpoint, `value_model.init_from_policy`) the trunk copied from
    `policy` — under FSDP2 shard by shard (both models share the mesh), no gather."""
    if not builds_sharded(cfg, layout):
        critic = build_critic(cfg, args, layout.device, policy)
        sync_parameters(critic, layout)
        return shard_model(critic.requires_grad_(requires_grad), cfg, layout)
    from wmtp.parallel.materialize import build_sharded, seeded_tensors

    if cfg.value_model.checkpoint:
        from wmtp.model.checkpoint import read_value_args, read_value_state

        def shapes():
            folder = materialize(cfg.value_model.checkpoint, cfg)
            return folder, *read_value_args(folder)
        folder, vargs, head = from_rank0(shapes, layout)
        model = build_value_model(vargs, head, device="meta")

        def source():
            return read_value_state(folder)[2].pop
    else:
        model = build_value_model(critic_args(cfg, args), cfg.value_model.head, device="meta")

        def source():
            return seeded_tensors(model, cfg.run.seed + 1, layout.device)
    model.requires_grad_(requires_grad)
    critic = build_sharded(model, lambda m: shard_model(m, cfg, layout), layout.device,
                           source if layout.is_main else None)
    if not cfg.value_model.checkpoint and policy is not None and cfg.value_model.init_from_policy:
        critic.init_from_policy(policy)
    return critic


def materialize(uri: str, cfg: WMTPConfig) -> Path:
    """Local path passthrough; `s3://` checkpoints are pulled into `<output_dir>/.assets`."""
    from wmtp.storage.s3 import materialize as pull

    return Path(pull(uri, Path(cfg.run.output_dir) / ".assets"))


def shard_model(model: nn.Module, cfg: WMTPConfig, layout: DistEnv) -> nn.Module:
    """Activation checkpointing, then FSDP2 (per block and head, root last) when distributed."""
    from wmtp.parallel.fsdp import apply_activation_checkpointing, apply_fsdp, fsdp_mesh, uses_mixed_precision

    if cfg.train.activation_checkpointing:
        apply_activation_checkpointing(model)
    if layout.distributed and cfg.orchestration.fsdp:
        mesh = fsdp_mesh(layout.device.type, layout.world_size, cfg.orchestration.fsdp_replicas)
        apply_fsdp(model, mesh=mesh, mixed_precision=uses_mixed_precision(cfg.train.precision, layout.device))
    return model


def sync_gradients(model: nn.Module, layout: DistEnv) -> None:
    """Replicated (non-FSDP) multi-rank training: SUM gradients across ranks in one flat bucket.

    SUM, not mean: each rank's loss is already divided by the *global* denominator.
    """
    if not layout.distributed or is_fsdp_sharded(model):
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def is_fsdp_sharded(model: nn.Module) -> bool:
    """True when `fully_shard` was applied (its gradients are reduced by FSDP itself)."""
    return any(type(m).__name__.startswith("FSDP") for m in model.modules())


def sync_parameters(model: nn.Module, layout: DistEnv) -> None:
    """Replicated training: start every rank from rank 0's weights."""
    if layout.distributed and not is_fsdp_sharded(model):
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class RecipeData:
    tokenizer: Any
    train: TrainingData
    valid: TrainingData


def load_data(cfg: WMTPConfig) -> RecipeData:
    """The configured JSONL files, or the bundled synthetic task (made on first use, then reused)."""
    from wmtp.model.tokenizer import Tokenizer

    train, valid, tok_path = cfg.data.train, cfg.data.valid, cfg.model.tokenizer
    if train is None or valid is None or tok_path is None:
        from wmtp.data.bundled import ensure_bundled

        bundled = ensure_bundled(n_problems=cfg.data.synth_problems, seed=cfg.data.synth_seed)
        train, valid = train or bundled.train, valid or bundled.valid
        tok_path = tok_path or bundled.tokenizer
    tokenizer = Tokenizer(str(tok_path))
    kw = dict(tokenizer=tokenizer, max_seq_len=cfg.data.max_seq_len, on_bad_line=cfg.data.on_bad_line)
    return RecipeData(tokenizer, TrainingData(train, **kw), TrainingData(valid, **kw))


class BatchStream:
    """Endless batches from a sampler; its position is the sampler's state (checkpointed)."""

    def __init__(self, data: TrainingData, sampler: Sampler, batch_size: int, device: torch.device,
                 pairs: bool = False):
        self.data, self.sampler, self.batch_size, self.device = data, sampler, batch_size, device
        self.pairs, self.last_tokens = pairs, 0
        self._it: Iterator = (data.pair_batches if pairs else data.batches)(sampler, batch_size)

    def next(self):
        """The next batch on the device; `self.last_tokens` holds its real-token count (host int,
        counted before the copy, so throughput logging costs no device sync)."""
        batch = next(self._it)
        mask = batch.chosen.attention_mask if self.pairs else batch.attention_mask
        self.last_tokens = int(mask.sum()) * (2 if self.pairs else 1)
        return batch.to(self.device)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def train_stream(data: TrainingData, cfg: WMTPConfig, layout: DistEnv, *, samples: str | None = None,
                 sampler: str | None = None) -> BatchStream:
    name = sampler or cfg.data.sampler
    s = data.sampler(name, samples=samples or cfg.data.samples, seed=cfg.run.seed, rank=layout.rank,
                     world_size=layout.world_size,
                     length_bucketing=8 if cfg.data.length_bucketing else 0,
                     batch_size=cfg.data.batch_size)
    return BatchStream(data, s, cfg.data.batch_size, layout.device, pairs=name == "pairwise")


def valid_batches(data: TrainingData, cfg: WMTPConfig, layout: DistEnv, *, samples: str = "all",
                  n_batches: int | None = None) -> list[Batch]:
    """A fixed validation set: the first `eval_batches` batches of a seeded order, per rank."""
    s = data.sampler("random", samples=samples, seed=cfg.run.seed + 7919, rank=layout.rank,
                     world_size=layout.world_size)
    n = n_batches or cfg.train.eval_batches
    return [data.collate(s.next(cfg.data.batch_size)).to(layout.device) for _ in range(n)]


def stack_padded(tensors: list[Tensor]) -> Tensor:
    """Micro-batches `[B_i, S_i]` → one `[ΣB_i, max S_i]` (right-padded with zeros/False), so a
    statistic over the whole step is one call."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors])


def split_padded(x: Tensor, shapes: list[torch.Size]) -> list[Tensor]:
    """Inverse of `stack_padded`: rows back to each micro-batch, cropped to its length."""
    out, row = [], 0
    for b, s in shapes:
        out.append(x[row:row + b, :s])
        row += b
    return out


def policy_labels(batch: Batch, samples: str) -> Tensor:
    """Targets the policy learns from: all responses, or only those of correct solutions."""
    if samples == "all":
        return batch.labels
    return batch.labels.masked_fill(~batch.is_correct[:, None], -100)


def truncated_samples(batches: list[Batch], layout: DistEnv) -> Tensor:
    """How many of the step's responses (all micro-batches, all ranks) `data.max_seq_len` cut before
    their EOS; their last token gets no terminal reward (docs/MATH.md "Truncated responses")."""
    local = sum(int(b.truncated.sum()) for b in batches if b.truncated is not None)
    return global_sum(torch.tensor(float(local), dtype=torch.float64, device=layout.device), layout)


def response_mask(batch: Batch) -> Tensor:
    """`[B, S]` bool: response tokens (solution body + EOS), whatever their correctness."""
    return batch.labels != -100


# ---------------------------------------------------------------------------------------------
# Optimisation


@dataclass
class Trainable:
    """A model with its optimiser and LR schedule."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any


def build_trainable(model: nn.Module, cfg: WMTPConfig, lr: float) -> Trainable:
    opt = build_optimizer(model, lr=lr, weight_decay=cfg.optim.weight_decay, betas=tuple(cfg.optim.betas))
    sched = build_scheduler(opt, warmup_steps=cfg.optim.warmup_steps, total_steps=cfg.train.steps,
                            min_lr_ratio=cfg.optim.min_lr_ratio)
    return Trainable(model, opt, sched)


def optimizer_step(parts: list[Trainable], loss: Tensor, cfg: WMTPConfig, layout: DistEnv, guard,
                   step: int) -> list[Tensor] | None:
    """Sum replicated gradients, clip each model's global norm, then step — unless the loss or a
    norm is non-finite on any rank, where the guard stops the run or skips the batch (None).

    One host sync per step: the guard's look at the (globally summed) loss and norms.
    """
    norms = []
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")
    for part in parts:
        sync_gradients(part.model, layout)
        params = [p for p in part.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        # FSDP2 parameters are DTensors: their norm is a replicated DTensor; keep a plain tensor.
        norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    check = global_sum(torch.stack([loss.detach().double(), *[n.detach().double() for n in norms]]), layout)
    skip = guard.check(float(check.sum()), step)
    for part in parts:
        if not skip:
            part.optimizer.step()
            part.scheduler.step()
        part.optimizer.zero_grad(set_to_none=True)
    return None if skip else norms


def step_denominators(labels: list[Tensor], n_heads: int, layout: DistEnv) -> Tensor:
    """`N_k` of the whole optimizer step: every micro-batch of every rank. `[H]` long."""
    local = torch.stack([count_valid_targets(lb, n_heads) for lb in labels]).sum(0)
    return global_sum(local, layout)


def n_heads_of(model: nn.Module) -> int:
    return model.args.n_future_tokens


def head_coefficients(cfg: WMTPConfig, n_heads: int) -> list[float] | None:
    coefs = cfg.model.head_coefficients
    if coefs is not None and len(coefs) != n_heads:
        raise ValueError(f"model.head_coefficients has {len(coefs)} entries but the model has {n_heads} heads")
    return coefs


# ---------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def validate_policy(model: Transformer, batches: list[Batch], cfg: WMTPConfig, layout: DistEnv,
                    samples: str = "correct") -> dict[str, float]:
    """Unweighted CE per head over the fixed validation batches (global token means)."""
    model.eval()
    H = n_heads_of(model)
    labels = [policy_labels(b, samples) for b in batches]
    denom = step_denominators(labels, H, layout)
    total = torch.zeros(H, dtype=torch.float64, device=layout.device)
    for b, lb in zip(batches, labels):
        out = model(b.tokens)
        res = mtp_cross_entropy(out.hidden, model.output.weight, lb, denominators=denom,
                                chunk_size=cfg.train.loss_chunk_size)
        total += res.ce_per_head.double()
    total = global_sum(total, layout)
    model.train()
    metrics = {f"val/ce_head{k + 1}": v for k, v in enumerate(total.tolist())}
    metrics["val/ce"] = metrics["val/ce_head1"]
    return metrics


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """AUC of `scores` separating `labels` (bool), by the rank-sum statistic (ties get half)."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    greater = (scores[labels][:, None] > scores[~labels][None, :]).double().sum()
    ties = (scores[labels][:, None] == scores[~labels][None, :]).double().sum()
    return float((greater + 0.5 * ties) / (n_pos * n_neg))


def final_values(values: Tensor, batch: Batch) -> Tensor:
    """`[B]` the critic's value of the last *trained* state: `V_{e−1}`, the prefix before the last
    response token e (EOS, or the cut token of a truncated response). The critic losses train the
    states `s−1 … e−1` (`state_values`) and GAE never reads `V_e`, so the value at e itself is
    untrained and must not be scored (issue 11 item 3)."""
    last_state = (batch.response_end - 1).clamp_min(0)
    return values.gather(1, last_state[:, None]).squeeze(1)


def pairwise_accuracy(scores: Tensor, labels: Tensor) -> float:
    """Share of (correct, incorrect) pairs ordered correctly by `scores` — the AUC without ties
    credit; validation proxy of the pairwise objective over all cross pairs."""
    pos, neg = scores[labels.bool()], scores[~labels.bool()]
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    return float((pos[:, None] > neg[None, :]).double().mean())


def gather_cat(x: Tensor, layout: DistEnv) -> Tensor:
    """Concatenate a 1-D tensor from every rank (validation statistics such as AUC)."""
    if not layout.distributed:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(layout.world_size)]
    dist.all_gather(sizes, torch.tensor([x.numel()], device=x.device))
    n = max(int(s) for s in sizes)
    padded = torch.zeros(n, dtype=x.dtype, device=x.device)
    padded[:x.numel()] = x
    parts = [torch.zeros_like(padded) for _ in range(layout.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s)] for p, s in zip(parts, sizes)])


# ---------------------------------------------------------------------------------------------
# Checkpoints: one format (torch DCP shards + per-rank extra state), 1 or N ranks.


def nonfinite_guard(cfg: WMTPConfig, sink):
    """The non-finite loss policy (`train.nonfinite`), naming the sink's last checkpoint."""
    from wmtp.training.nonfinite import NonFiniteGuard

    return NonFiniteGuard(cfg.train.nonfinite, cfg.train.max_skipped_batches, sink.latest)


def resume_or_start(state: LoopState, cfg: WMTPConfig, sink, logger, layout: DistEnv) -> int:
    """Seed this rank, then restore the sink's latest checkpoint (returns its step) or, for a
    fresh run, log the resolved config as params (returns 0)."""
    from wmtp.training.seeding import seed_everything

    seed_everything(cfg.run.seed + layout.rank)
    if (ckpt := resumable_checkpoint(sink)) is not None:
        return state.restore(ckpt)
    logger.log_params(config_params(cfg))
    return 0


def resumable_checkpoint(sink) -> Path | None:
    """The newest checkpoint of `sink` that verifies on every rank (a damaged one is named in a
    warning and skipped; none usable: CheckpointDamaged, exit 2). The sink then resumes from it."""
    from wmtp.parallel.checkpointing import first_good_checkpoint

    candidates = sink.candidates() if hasattr(sink, "candidates") else [p for p in [sink.latest()] if p is not None]
    chosen = first_good_checkpoint(candidates)
    if chosen is not None and hasattr(sink, "resume_from"):
        sink.resume_from(chosen)
    return chosen


@dataclass
class LoopState:
    """Everything a resumed run needs besides the config: models + optimisers (DCP shards),
    schedulers, sampler position, RNG, non-finite guard, throughput meter and any extra stateful
    parts (e.g. the EMA normaliser). One checkpoint format for 1 or N ranks."""

    stream: Any
    guard: Any
    meter: Any
    trainables: dict[str, Trainable]
    stateful: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Models checkpointed without an optimizer (e.g. the critic snapshot of critic_sync_interval > 1).
    models: dict[str, nn.Module] = dataclasses.field(default_factory=dict)

    def all_models(self) -> dict[str, nn.Module]:
        return {**{n: t.model for n, t in self.trainables.items()}, **self.models}

    def write(self, path: Path, step: int) -> None:
        from wmtp.parallel.checkpointing import save_sharded
        from wmtp.training.seeding import rng_state

        extra = {"step": step, "sampler": self.stream.state_dict(), "rng": rng_state(),
                 "guard": self.guard.state_dict(), "meter": self.meter.state_dict(),
                 "schedulers": {n: t.scheduler.state_dict() for n, t in self.trainables.items()},
                 "stateful": {n: obj.state_dict() for n, obj in self.stateful.items()}}
        save_sharded(path, self.all_models(), {n: t.optimizer for n, t in self.trainables.items()}, extra)

    def restore(self, path: Path) -> int:
        """Load a checkpoint written by `write`; returns its step."""
        from wmtp.parallel.checkpointing import load_sharded
        from wmtp.training.seeding import set_rng_state

        extra = load_sharded(path, self.all_models(), {n: t.optimizer for n, t in self.trainables.items()})
        self.stream.load_state_dict(extra["sampler"])
        self.guard.load_state_dict(extra["guard"])
        self.meter.load_state_dict(extra["meter"])
        for n, t in self.trainables.items():
            t.scheduler.load_state_dict(extra["schedulers"][n])
        for n, obj in self.stateful.items():
            obj.load_state_dict(extra["stateful"][n])
        set_rng_state(extra["rng"])
        return int(extra["step"])

    def settle(self, accepted: bool) -> None:
        """After `optimizer_step`: commit the staged updates of stateful parts (the EMA
        normaliser) when the step was accepted, discard them when the guard skipped it."""
        for obj in self.stateful.values():
            if accepted and hasattr(obj, "commit"):
                obj.commit()
            elif not accepted and hasattr(obj, "discard"):
                obj.discard()

    def metrics(self) -> dict[str, float]:
        """Loop metrics logged every `log_every` steps, skipped steps included."""
        return {"train/skipped_batches": float(self.guard.skipped)}


def export_model(model: nn.Module, cfg: WMTPConfig, layout: DistEnv, tokenizer=None,
                 value_head: str | None = None, out: Path | None = None) -> Path:
    """Write the trained model to `<run_dir>/export` (or `out`) (safetensors + params.json, plus the
    tokenizer.model it was trained with, so `wmtp eval --checkpoint <export>` and the next stage
    need nothing else), rank 0 only.

    Every rank takes part in gathering FSDP shards, one tensor at a time straight to rank 0's host
    memory (`wmtp.parallel.gather`: no whole model on a GPU); the files appear atomically (tmp +
    rename)."""
    import shutil

    from wmtp.model.checkpoint import save_model, save_value_model

    # One tensor at a time onto rank 0's host (the others take part in the gathers).
    state = gather_state_dict(model, keep=layout.is_main)
    out = out if out is not None else export_dir(cfg)
    if layout.is_main:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        replica = unwrap_replica(model, state)
        if value_head is not None:
            save_value_model(replica, tmp)
        else:
            save_model(replica, tmp)
            export_handoff_formats(replica, tmp, cfg.train.export_formats)
        if tokenizer is not None:
            shutil.copyfile(tokenizer.path, tmp / "tokenizer.model")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    if layout.distributed:
        dist.barrier()
    return out


def export_handoff_formats(model: Transformer, folder: Path, formats: list[str]) -> None:
    """`folder/meta` (Meta's params.json + consolidated.00.pth) and `folder/hf` (HF LLaMA
    safetensors + config.json of head 1: the inverse of the HF import) for a plain (unsharded)
    policy; tensors are converted one at a time (`wmtp.model.checkpoint.save_hf_llama`)."""
    from wmtp.model.checkpoint import iter_full_tensors, save_hf_llama, save_meta_checkpoint

    if "meta" in formats:
        save_meta_checkpoint(model, folder / "meta")
    if "hf" in formats:
        save_hf_llama(iter_full_tensors(model), model.args, folder / "hf")


def unwrap_replica(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """A plain (unsharded, CPU) copy of `model` holding `state`, for saving."""
    from wmtp.model.value import ValueModel, build_value_model

    if isinstance(model, ValueModel):
        replica = build_value_model(model.args, model.value_head.kind, device="cpu", seed=None)
    else:
        replica = build_model(model.args, device="cpu", seed=None)
    replica.load_state_dict(state)
    return replica


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Unsharded CPU state dict on every rank, gathered one tensor at a time (FSDP2: a collective)."""
    return gather_state_dict(model)


def head_metrics(prefix: str, values: Tensor) -> dict[str, Tensor]:
    """`[H]` tensor → {prefix_head1: 0-dim tensor, ...} (synced later, once, by the loop)."""
    return {f"{prefix}_head{k + 1}": v for k, v in enumerate(values.unbind())}


def stat_tensors(prefix: str, stats: Any) -> dict[str, Tensor]:
    """A stats dataclass (WeightStats, Rho1Stats) as unsynced tensors for the loop to log:
    0-dim fields as `prefix/name`, `[H]` fields as `prefix/name/head<k>`."""
    out: dict[str, Tensor] = {}
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        if value.dim() == 0:
            out[f"{prefix}/{f.name}"] = value
        else:
            out.update({f"{prefix}/{f.name}/head{k + 1}": v for k, v in enumerate(value.unbind())})
    return out


def lr_metrics(state: LoopState) -> dict[str, float]:
    return {f"train/lr_{n}": t.scheduler.get_last_lr()[0] for n, t in state.trainables.items()}


def throughput_meter(model: nn.Module, cfg: WMTPConfig, layout: DistEnv):
    """tokens/s and MFU (FLOPs per token from the model's shapes, peak from the accelerator table)."""
    from wmtp.model.memory import flops_per_token
    from wmtp.training.throughput import ThroughputMeter, current_device_peak_flops

    peak = current_device_peak_flops() if layout.device.type == "cuda" else None
    return ThroughputMeter(flops_per_token=flops_per_token(model.args, cfg.data.max_seq_len), peak_flops=peak,
                           n_devices=layout.world_size)


def log_weight_heatmap(logger, tokenizer, batch: Batch, weights: Tensor, step: int, n_samples: int,
                       title: str) -> None:
    """Heatmap of the response tokens of the first `n_samples` rows (HTML with the tokens, and a
    PNG), each row marked correct / incorrect, logged as artifacts under `heatmaps/`.

    weights: `[B, S]` target-indexed (the weight of token j) or `[B, S, H]` (head 1's, shifted to
    the token it predicts)."""
    import tempfile

    from wmtp.tracking.heatmap import outcome_labels, token_weight_heatmap_html, token_weight_heatmap_png

    if weights.dim() == 3:
        weights = torch.cat([torch.zeros_like(weights[:, :1, 0]), weights[:, :-1, 0]], dim=1)
    rows, vals = [], []
    for i in range(min(n_samples, batch.tokens.shape[0])):
        s, e = int(batch.response_start[i]), int(batch.response_end[i])
        ids = batch.tokens[i, s:e + 1].tolist()
        rows.append([tokenizer.decode([t]) or tokenizer_piece(tokenizer, t) for t in ids])
        vals.append(weights[i, s:e + 1].double().tolist())
    correct = getattr(batch, "is_correct", None)
    labels = outcome_labels([None if correct is None else bool(correct[i]) for i in range(len(rows))])
    html = token_weight_heatmap_html(rows, vals, title, row_labels=labels)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"token_weights_step{step:06d}.html"
        path.write_text(html, encoding="utf-8")
        logger.log_artifact(path, "heatmaps")
        png = path.with_suffix(".png")
        token_weight_heatmap_png(vals, png, title, row_labels=labels)
        logger.log_artifact(png, "heatmaps")


def tokenizer_piece(tokenizer, token_id: int) -> str:
    """Readable stand-in for tokens that decode to nothing (EOS, control pieces)."""
    return "⟨eos⟩" if token_id == tokenizer.eos_id else f"⟨{token_id}⟩"


def config_params(cfg: WMTPConfig) -> dict[str, str]:
    from wmtp.config.loader import flatten_config

    return flatten_config(cfg)


def replace_config(cfg: WMTPConfig, **sections: dict) -> WMTPConfig:
    """A copy of `cfg` with dotted-section updates, validated (used by stage chaining)."""
    data = cfg.model_dump()
    for section, updates in sections.items():
        data[section] = {**data[section], **updates} if isinstance(updates, dict) else updates
    return WMTPConfig.model_validate(data)




# ---------------------------------------------------------------------------------------------
# Generation check during training (issue 6: "recipes can run a small evaluation every N steps")

GENERATE_EVAL_TASKS = 8  # a cheap progress signal, not a benchmark (use `wmtp eval` for that)


def generation_eval_tasks(cfg: WMTPConfig, n_tasks: int = GENERATE_EVAL_TASKS) -> list:
    """The first `n_tasks` records of the bundled task's validation split (HumanEval format)."""
    from wmtp.data.bundled import ensure_bundled
    from wmtp.evaluation.benchmarks import load_jsonl_tasks

    bundled = ensure_bundled(n_problems=cfg.data.synth_problems, seed=cfg.data.synth_seed)
    return load_jsonl_tasks(bundled.valid_eval, limit=n_tasks)


def evaluate_generation(model: Transformer, tokenizer, tasks: list, cfg: WMTPConfig, layout: DistEnv,
                        step: int) -> dict[str, float]:
    """Greedy pass@1 of the policy on `tasks` as `eval/pass_at_1` (…, `eval/n_tasks`) when
    `train.eval_generate_every` divides `step`; {} otherwise.

    Replicated models generate on rank 0 only; FSDP-sharded ones on every rank in lockstep (their
    forwards gather shards). Only rank 0 returns the metrics; the recipe's `evaluate` returns them
    with its validation metrics, so every rank logs (and reports to Ray) the same number of times."""
    every = cfg.train.eval_generate_every
    if not every or step % every != 0 or not tasks:
        return {}
    if not layout.is_main and not is_fsdp_sharded(model):
        return {}
    from wmtp.evaluation.runner import evaluate_pass_at_k

    result = evaluate_pass_at_k(model, tokenizer, tasks, n=1, k=[1], temperature=0.0,
                                max_new_tokens=cfg.data.max_seq_len, batch_size=len(tasks), seed=cfg.run.seed,
                                workers=1, n_bootstrap=100)
    if not layout.is_main:
        return {}
    return {f"eval/{k}": v for k, v in result.metrics.items()}

"""The models as recipes hold them: shapes from the config or a checkpoint, built whole (one
process, replicated ranks) or on the meta device → FSDP2 → filled by rank 0
(`wmtp.parallel.materialize`, docs/DISTRIBUTED.md "Loading"), and replicated-gradient sums.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from wmtp.checkpoint import CHECKPOINT_FILES, CheckpointReader, describe_args
from wmtp.config.schema import WMTPConfig
from wmtp.model.args import ModelArgs, get_preset
from wmtp.model.transformer import Transformer, build_model
from wmtp.model.value import ValueModel, build_value_model, value_args_from_policy
from wmtp.parallel.reduce import DistEnv

if TYPE_CHECKING:
    from wmtp.parallel.materialize import TensorSource

_Built = TypeVar("_Built", Transformer, ValueModel)


def policy_args(cfg: WMTPConfig, vocab_size: int | None = None, checkpoint: str | Path | None = None,
                reader: CheckpointReader = CHECKPOINT_FILES) -> ModelArgs:
    """The policy's shapes. Without a checkpoint: preset → `model.params` → head count → the
    tokenizer's vocab. With one (`checkpoint`, or a local `model.checkpoint`): the checkpoint's
    params.json reconciled with `model.params`/`model.n_future_tokens` (docs/MODEL.md rule).
    `reader`: how checkpoint folders are read, here and in the builders below (the recipe's
    `RecipeEnv.checkpoints`; the memory trace reads shapes only): the one checkpoint API this
    module calls (`wmtp.checkpoint.CheckpointReader`)."""
    from wmtp.config.loader import ConfigError

    changes = dict(cfg.model.params)
    if cfg.model.n_future_tokens:
        changes["n_future_tokens"] = cfg.model.n_future_tokens
    if checkpoint is None and cfg.model.checkpoint and "://" not in cfg.model.checkpoint:
        checkpoint = Path(cfg.model.checkpoint).expanduser()
    if checkpoint is not None:
        args = reader.reconciled_args(checkpoint, changes, what="model.params / model.n_future_tokens")
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


def build_policy(cfg: WMTPConfig, vocab_size: int | None, device: torch.device,
                 reader: CheckpointReader = CHECKPOINT_FILES) -> Transformer:
    """From `model.checkpoint` when given (local folder or s3:// URI), reconciled with the config
    (`policy_args`), else initialised from the seed. Logs the shapes it built from a checkpoint."""
    if cfg.model.checkpoint:
        folder = materialize(cfg.model.checkpoint, cfg)
        args = policy_args(cfg, vocab_size, checkpoint=folder, reader=reader)
        model = reader.load_model(folder, device=device, args=args)
        if DistEnv.from_env("cpu").is_main:
            print(f"[wmtp] policy from {cfg.model.checkpoint}: {describe_args(args)}", flush=True)
        return model
    return build_model(policy_args(cfg, vocab_size), device=device, seed=cfg.run.seed)


def build_critic(cfg: WMTPConfig, args: ModelArgs, device: torch.device,
                 policy: Transformer | None = None, reader: CheckpointReader = CHECKPOINT_FILES) -> ValueModel:
    """From `value_model.checkpoint`, else a backbone as deep as the policy trunk (optionally
    initialised from it)."""
    if cfg.value_model.checkpoint:
        return reader.load_value_model(materialize(cfg.value_model.checkpoint, cfg), device=device)
    critic = build_value_model(critic_args(cfg, args), cfg.value_model.head, device=device, seed=cfg.run.seed + 1)
    if policy is not None and cfg.value_model.init_from_policy:
        critic.init_from_policy(policy)
    return critic


def builds_sharded(cfg: WMTPConfig, layout: DistEnv) -> bool:
    """Distributed with FSDP2: models are built on the meta device, sharded, then loaded
    (`wmtp.parallel.materialize`); otherwise built whole on the device, as in one process."""
    return layout.distributed and cfg.orchestration.fsdp


def policy_model(cfg: WMTPConfig, vocab_size: int | None, layout: DistEnv,
                 reader: CheckpointReader = CHECKPOINT_FILES) -> Transformer:
    """The policy as the recipe trains it: `build_policy`'s weights, activation checkpointing and,
    when distributed, FSDP2 (`shard_model`) or the same weights on every rank.

    FSDP2: built on the meta device, sharded, then each rank's shards are filled from full tensors
    made one at a time on rank 0: read from `model.checkpoint` by rank 0 alone (the others read
    no file: rank 0 broadcasts the shapes), or initialised from `run.seed` (the same full weights as
    `build_policy`). docs/DISTRIBUTED.md "Loading"."""
    if not builds_sharded(cfg, layout):
        policy = build_policy(cfg, vocab_size, layout.device, reader)
        sync_parameters(policy, layout)
        return shard_model(policy, cfg, layout)
    from wmtp.parallel.materialize import seeded_tensors

    # Rank 0 alone pulls and reads the checkpoint folder; the others get its shapes from rank 0.
    folder, args = from_rank0(lambda: _policy_source(cfg, vocab_size, reader), layout)
    model = build_model(args, device="meta")
    if folder is not None:
        def source():
            return reader.read_model_state(folder, args)[1].pop
        if layout.is_main:
            print(f"[wmtp] policy from {cfg.model.checkpoint}: {describe_args(args)}", flush=True)
    else:
        def source():
            return seeded_tensors(model, cfg.run.seed, layout.device)
    return sharded_from_rank0(model, lambda m: shard_model(m, cfg, layout), source, layout)


def source_policy(cfg: WMTPConfig, vocab_size: int | None, layout: DistEnv,
                  reader: CheckpointReader = CHECKPOINT_FILES) -> Transformer:
    """A policy read only to start another model from (the critic recipe's `init_from_policy`),
    never trained: sharded like the critic will be under FSDP2 (`policy_model`), else whole on
    the host, so a single GPU never holds it."""
    if builds_sharded(cfg, layout):
        return policy_model(cfg, vocab_size, layout, reader)
    return build_policy(cfg, vocab_size, torch.device("cpu"), reader)


def _policy_source(cfg: WMTPConfig, vocab_size: int | None,
                   reader: CheckpointReader) -> tuple[Path | None, ModelArgs]:
    folder = materialize(cfg.model.checkpoint, cfg) if cfg.model.checkpoint else None
    return folder, policy_args(cfg, vocab_size, checkpoint=folder, reader=reader)


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


def sharded_from_rank0(model: _Built, shard: Callable[[_Built], _Built], source: TensorSource,
                       layout: DistEnv) -> _Built:
    """A meta-built `model` → `shard(model)` → this rank's shards, filled from the full tensors of
    `source()`, called on rank 0 alone (`wmtp.parallel.materialize.build_sharded`)."""
    from wmtp.parallel.materialize import build_sharded

    return build_sharded(model, shard, layout.device, source if layout.is_main else None)


def critic_model(cfg: WMTPConfig, args: ModelArgs, layout: DistEnv, policy: Transformer | None = None,
                 requires_grad: bool = True, reader: CheckpointReader = CHECKPOINT_FILES) -> ValueModel:
    """The critic as the recipe holds it (`build_critic`'s weights, `requires_grad` as given),
    sharded like `policy_model`: from `value_model.checkpoint` read by rank 0 alone, or from
    `run.seed + 1`, then (no checkpoint, `value_model.init_from_policy`) the trunk copied from
    `policy` — under FSDP2 shard by shard (both models share the mesh), no gather."""
    if not builds_sharded(cfg, layout):
        critic = build_critic(cfg, args, layout.device, policy, reader)
        sync_parameters(critic, layout)
        return shard_model(critic.requires_grad_(requires_grad), cfg, layout)
    from wmtp.parallel.materialize import seeded_tensors

    if cfg.value_model.checkpoint:
        def shapes():
            folder = materialize(cfg.value_model.checkpoint, cfg)
            return folder, *reader.read_value_args(folder)
        folder, vargs, head = from_rank0(shapes, layout)
        model = build_value_model(vargs, head, device="meta")

        def source():
            return reader.read_value_state(folder)[2].pop
    else:
        model = build_value_model(critic_args(cfg, args), cfg.value_model.head, device="meta")

        def source():
            return seeded_tensors(model, cfg.run.seed + 1, layout.device)
    model.requires_grad_(requires_grad)
    critic = sharded_from_rank0(model, lambda m: shard_model(m, cfg, layout), source, layout)
    if not cfg.value_model.checkpoint and policy is not None and cfg.value_model.init_from_policy:
        critic.init_from_policy(policy)
    return critic


def materialize(uri: str, cfg: WMTPConfig) -> Path:
    """Local path passthrough; `s3://` checkpoints are pulled into `<output_dir>/.assets`."""
    from wmtp.storage.s3 import materialize as pull

    return Path(pull(uri, Path(cfg.run.output_dir) / ".assets"))


def shard_model(model: _Built, cfg: WMTPConfig, layout: DistEnv) -> _Built:
    """Activation checkpointing, then FSDP2 (per block and head, root last) when distributed."""
    from wmtp.parallel.fsdp import apply_activation_checkpointing, apply_fsdp, fsdp_mesh, uses_mixed_precision

    if cfg.train.activation_checkpointing:
        apply_activation_checkpointing(model)
    if layout.distributed and cfg.orchestration.fsdp:
        mesh = fsdp_mesh(layout.device.type, layout.world_size, cfg.orchestration.fsdp_replicas)
        apply_fsdp(model, mesh=mesh, mixed_precision=uses_mixed_precision(cfg.train.precision, layout.device,
                                                                             layout.gpu_policies))
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

"""Loading a model from a checkpoint folder: the shapes a run builds (the checkpoint's, reconciled
with the config: docs/MODEL.md "Checkpoint and config"), its heads adapted, its weights checked
and placed; `CheckpointReader`, the one object model building reads checkpoints through.

The files themselves (wmtp, Meta, HF LLaMA) are `wmtp.checkpoint.formats`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from wmtp.checkpoint.formats import (
    VALUE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    check_state_dict,
    checkpoint_folder,
    read_checkpoint,
    read_checkpoint_args,
    read_safetensors,
    read_value_args,
)
from wmtp.model.args import ModelArgs
from wmtp.model.transformer import Transformer
from wmtp.model.value import ValueModel

_Loaded = TypeVar("_Loaded", Transformer, ValueModel)


class ModelIdentityError(CheckpointError):
    """The config asks for shapes the checkpoint's weights cannot have: names both values."""


# params.json keys that shape no weight: a config may set them over the checkpoint's.
_FREE_KEYS = frozenset({"max_seq_len"})
# Keys compared by `load_model(args=...)` (everything that shapes or changes the weights' meaning).
_IDENTITY_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
                  "norm_eps", "rope_theta", "n_future_tokens")


def reconcile_args(ckpt: ModelArgs, requested: dict[str, Any], source: str | Path, what: str = "model.params") -> ModelArgs:
    """The shapes a run builds from a checkpoint whose params are `ckpt`, given the config's
    explicit settings `requested` (`model.params` plus `model.n_future_tokens`).

    Rule (docs/MODEL.md "Checkpoint and config"): the checkpoint's trunk is kept as it is.
      - `n_future_tokens` may differ: fewer heads drop the extra heads past the new count; more
        heads add blocks initialised from the last trunk block (head 1). `n_layers` follows
        (trunk blocks + heads − 1); a `model.params.n_layers` that contradicts it is a conflict.
      - `max_seq_len` (no weights) is taken from the config.
      - any other key that differs is a `ModelIdentityError` listing every conflict, both values.
    """
    heads = requested.get("n_future_tokens", ckpt.n_future_tokens)
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ModelIdentityError(f"{what}.n_future_tokens must be an integer >= 1, got {heads!r}")
    n_layers = ckpt.n_trunk_layers + heads - 1
    conflicts = []
    for key, value in requested.items():
        if key in ("n_future_tokens", *_FREE_KEYS):
            continue
        if key == "n_layers":
            if value != n_layers:
                conflicts.append(f"n_layers: config {value!r}, checkpoint {ckpt.n_layers} ({ckpt.n_trunk_layers} "
                                 f"trunk blocks + {heads - 1} extra heads = {n_layers})")
            continue
        if not hasattr(ckpt, key):
            conflicts.append(f"{key}: not a params.json field")
        elif getattr(ckpt, key) != value and not (key == "n_kv_heads" and (value or ckpt.n_heads) == ckpt.kv_heads):
            conflicts.append(f"{key}: config {value!r}, checkpoint {getattr(ckpt, key)!r}")
    if conflicts:
        raise ModelIdentityError(
            f"{what} conflicts with the checkpoint {source}: " + "; ".join(conflicts)
            + ". A checkpoint's shapes are fixed (only n_future_tokens and max_seq_len may change, docs/MODEL.md); "
              "remove the setting or use a checkpoint with those shapes")
    free = {k: requested[k] for k in _FREE_KEYS if k in requested}
    return ckpt.replace(n_future_tokens=heads, n_layers=n_layers, **free)


def adapt_heads(state: dict[str, Tensor], ckpt: ModelArgs, args: ModelArgs) -> dict[str, Tensor]:
    """A Meta-layout state dict of `ckpt`'s heads rewritten for `args.n_future_tokens` heads:
    extra heads past the new count dropped; new extra heads copied from the last trunk block."""
    old, new = ckpt.n_future_tokens, args.n_future_tokens
    if old == new:
        return state
    out = {k: v for k, v in state.items()
           if not (k.startswith("extra_heads.") and int(k.split(".")[1]) >= new - 1)}
    last = f"layers.{ckpt.n_trunk_layers - 1}."
    for j in range(old - 1, new - 1):
        for key, tensor in state.items():
            if key.startswith(last):
                out[f"extra_heads.{j}.{key[len(last):]}"] = tensor.clone()
    return out


def describe_args(args: ModelArgs) -> str:
    """One line of the shapes a run builds (logged when a run starts from a checkpoint)."""
    return (f"dim={args.dim} n_layers={args.n_layers} (trunk {args.n_trunk_layers - 1} + {args.n_future_tokens} "
            f"head(s)) n_heads={args.n_heads} n_kv_heads={args.kv_heads} vocab_size={args.vocab_size} "
            f"ffn_hidden_dim={args.ffn_hidden_dim} rope_theta={args.rope_theta} max_seq_len={args.max_seq_len}")


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               args: ModelArgs | None = None) -> Transformer:
    """Load a policy from a wmtp, Meta or HF LLaMA folder.

    dtype: parameter dtype; None means float32 (master weights for training). Pass
        `torch.bfloat16` for inference.
    args: the shapes to build, from `reconcile_args` (default: the checkpoint's own). Heads are
        dropped or added from the last trunk block as `adapt_heads` says; any other difference
        is a `ModelIdentityError`.
    """
    folder = checkpoint_folder(path)
    args, state = read_model_state(folder, args)
    with torch.device("meta"):
        model = Transformer(args)
    return _materialise(model, device, dtype, state, folder)


def read_model_state(path: str | Path, args: ModelArgs | None = None) -> tuple[ModelArgs, dict[str, Tensor]]:
    """(shapes, state dict) that `load_model(path, args=args)` loads, checked against the model
    `args` describes (heads adapted): what rank 0 reads for a sharded load (wmtp.parallel.materialize)."""
    folder = checkpoint_folder(path)
    if (folder / VALUE_FILE).is_file():
        raise CheckpointError(f"{folder} holds a value model ({VALUE_FILE}); load it with load_value_model")
    ckpt_args, state = read_checkpoint(folder)
    if args is None:
        args = ckpt_args
    else:
        expected = reconcile_args(ckpt_args, {k: getattr(args, k) for k in _IDENTITY_KEYS}, folder)
        if expected != args.replace(max_seq_len=expected.max_seq_len):
            raise ModelIdentityError(f"{folder}: requested shapes {args} do not follow from the checkpoint's "
                                     f"{ckpt_args}")
        state = adapt_heads(state, ckpt_args, args)
    with torch.device("meta"):
        check_state_dict(Transformer(args), state, folder)
    return args, state


def load_value_model(path: str | Path, device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None) -> ValueModel:
    """Load a critic written by `save_value_model` (dtype None = float32)."""
    folder = checkpoint_folder(path)
    args, head, state = read_value_state(folder)
    with torch.device("meta"):
        model = ValueModel(args, head=head)
    return _materialise(model, device, dtype, state, folder)


def read_value_state(path: str | Path) -> tuple[ModelArgs, str, dict[str, Tensor]]:
    """(shapes, head, state dict) that `load_value_model` loads, checked against the model."""
    folder = checkpoint_folder(path)
    args, head = read_value_args(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    state = read_safetensors(weights)
    with torch.device("meta"):
        check_state_dict(ValueModel(args, head=head), state, folder)
    return args, head, state


def _materialise(model: _Loaded, device: str | torch.device, dtype: torch.dtype | None, state: dict[str, Tensor],
                 source: Path) -> _Loaded:
    """Meta-device model → allocated on `device` in `dtype`, filled from `state` (checked first)."""
    check_state_dict(model, state, source)
    model.to_empty(device=device)
    model.to(dtype or torch.float32)
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    backbone = model.backbone if isinstance(model, ValueModel) else model
    backbone.init_rope()
    return model


class CheckpointReader:
    """Every read that builds a model from a checkpoint folder, the one API model building calls
    (`wmtp.parallel.build`, the recipes): this module's functions. A recipe gets its reader from
    whatever runs it (`wmtp.recipes.interfaces.RecipeEnv`); the memory trace's reads shapes only
    (`wmtp.trace`)."""

    def read_checkpoint_args(self, path: str | Path) -> ModelArgs:
        return read_checkpoint_args(path)

    def reconciled_args(self, path: str | Path, requested: dict[str, Any], what: str = "model.params") -> ModelArgs:
        """The shapes a run builds from the policy checkpoint `path` and the config's `requested`
        settings (`reconcile_args` over `read_checkpoint_args`)."""
        return reconcile_args(self.read_checkpoint_args(path), requested, path, what=what)

    def read_value_args(self, path: str | Path) -> tuple[ModelArgs, str]:
        return read_value_args(path)

    def load_model(self, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   args: ModelArgs | None = None) -> Transformer:
        return load_model(path, device, dtype, args)

    def load_value_model(self, path: str | Path, device: str | torch.device = "cpu",
                         dtype: torch.dtype | None = None) -> ValueModel:
        return load_value_model(path, device, dtype)

    def read_model_state(self, path: str | Path, args: ModelArgs | None = None) -> tuple[ModelArgs, dict[str, Tensor]]:
        return read_model_state(path, args)

    def read_value_state(self, path: str | Path) -> tuple[ModelArgs, str, dict[str, Tensor]]:
        return read_value_state(path)


# The reader of the files themselves (training, planning, tests).
CHECKPOINT_FILES = CheckpointReader()


__all__ = [
    "CHECKPOINT_FILES", "CheckpointReader", "ModelIdentityError", "adapt_heads", "describe_args", "load_model",
    "load_value_model", "read_model_state", "read_value_state", "reconcile_args",
]

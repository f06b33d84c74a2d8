"""Sharded training checkpoints with torch Distributed Checkpoint (DCP).

One folder per checkpoint:
    .metadata, __{rank}_{i}.distcp     DCP shards of every model and optimizer (each rank writes its own)
    extra_rank{r}.pt                   rank r's picklable extra state (RNG, sampler position, EMA stats, step)

Works with and without FSDP2 and in one process without a process group (DCP's no-dist mode);
a checkpoint saved on N ranks loads on M ranks (DCP reshards). Models and optimizers are matched
by name: `optimizers["policy"]` belongs to `models["policy"]`.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim import Optimizer

from wmtp.parallel.reduce import barrier, rank


def _check_names(models: dict[str, nn.Module], optimizers: dict[str, Optimizer]) -> None:
    orphans = sorted(set(optimizers) - set(models))
    if orphans:
        raise ValueError(f"optimizers {orphans} have no model of the same name; models: {sorted(models)}")


def _state(models: dict[str, nn.Module], optimizers: dict[str, Optimizer]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name, model in models.items():
        state[f"model.{name}"] = get_model_state_dict(model)
    for name, optimizer in optimizers.items():
        state[f"optim.{name}"] = get_optimizer_state_dict(models[name], optimizer)
    return state


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it assumes one process when no process group exists: here that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def save_sharded(path: str | Path, models: dict[str, nn.Module], optimizers: dict[str, Optimizer],
                 extra_state: dict[str, Any]) -> Path:
    """Every rank calls it (a collective). Returns the folder once all ranks have written."""
    _check_names(models, optimizers)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    with _single_process_quiet():
        dcp.save(_state(models, optimizers), checkpoint_id=str(folder))
    torch.save(extra_state, folder / f"extra_rank{rank()}.pt")
    barrier()  # the folder is complete on every rank before anyone reports it
    return folder


def load_sharded(path: str | Path, models: dict[str, nn.Module], optimizers: dict[str, Optimizer]) -> dict[str, Any]:
    """Restore models and optimizers in place (a collective); return this rank's extra state.

    A rank with no `extra_rank{r}.pt` (resuming on more ranks than saved) gets rank 0's, with a
    warning: per-rank streams such as RNG states then repeat.
    """
    _check_names(models, optimizers)
    folder = Path(path)
    if not (folder / ".metadata").is_file():
        raise FileNotFoundError(f"no DCP checkpoint at {folder} (missing {folder / '.metadata'})")
    state = _state(models, optimizers)
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(folder))
    for name, model in models.items():
        set_model_state_dict(model, state[f"model.{name}"], options=StateDictOptions(strict=True))
    for name, optimizer in optimizers.items():
        set_optimizer_state_dict(models[name], optimizer, state[f"optim.{name}"])
    extra_file = folder / f"extra_rank{rank()}.pt"
    if not extra_file.is_file():
        warnings.warn(f"{extra_file} not found (checkpoint saved on fewer ranks); using rank 0's extra state",
                      stacklevel=2)
        extra_file = folder / "extra_rank0.pt"
    # Our own file, holding RNG states and plain Python objects: not a weights-only payload.
    return torch.load(extra_file, weights_only=False)


def load_full_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], *,
                         broadcast_from_rank0: bool = False) -> None:
    """Load a full (unsharded) state dict, e.g. from `wmtp.model.checkpoint.read_checkpoint`, into
    a model that may be FSDP-sharded: each rank keeps its own shard.

    broadcast_from_rank0: only rank 0 read the weights (others pass `{}`); rank 0 broadcasts, so a
    7B checkpoint sits in host memory once per node instead of once per rank.
    """
    options = StateDictOptions(full_state_dict=True, strict=True, broadcast_from_rank0=broadcast_from_rank0)
    # A shallow copy: set_model_state_dict replaces the dict's values with local shards in place.
    set_model_state_dict(model, dict(state_dict), options=options)


__all__ = ["load_full_state_dict", "load_sharded", "save_sharded"]

"""Sharded training checkpoints with torch Distributed Checkpoint (DCP).

One folder per checkpoint:
    .metadata, __{rank}_{i}.distcp     DCP shards of every model and optimizer (each rank writes its own)
    extra_rank{r}.pt                   rank r's picklable extra state (RNG, sampler position, EMA stats, step)
    manifest_rank{r}.json              written last by rank r: world size, and bytes + CRC-32 of each
                                       file rank r wrote (rank 0's includes `.metadata`)

A checkpoint is complete when every rank's manifest is there; `verify_sharded` checks a folder
against its manifests (names the first bad file) before `load_sharded` trusts it.

Works with and without FSDP2 and in one process without a process group (DCP's no-dist mode);
a checkpoint saved on N ranks loads on M ranks (DCP reshards). Models and optimizers are matched
by name: `optimizers["policy"]` belongs to `models["policy"]`.
"""
# One module (over 300 lines): DCP save/load and the checkpoint manifest (sizes, CRC-32) are one format.

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from wmtp.errors import WMTPUserError

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
_CHUNK = 1 << 22


class CheckpointDamaged(WMTPUserError, RuntimeError):
    """A checkpoint folder that fails verification; the message names the folder and the file."""


# This process's place, read from torch.distributed as `wmtp.parallel.reduce` reads it (that
# package builds models from checkpoints, so this one sits below it and cannot import it).
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if _distributed() else 1


def barrier() -> None:
    if _distributed():
        dist.barrier()


def _check_names(models: dict[str, nn.Module], optimizers: dict[str, Optimizer]) -> None:
    orphans = sorted(set(optimizers) - set(models))
    if orphans:
        raise ValueError(f"optimizers {orphans} have no model of the same name; models: {sorted(models)}")


def _state(models: dict[str, nn.Module], optimizers: dict[str, Optimizer]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

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
    import torch.distributed.checkpoint as dcp  # imported when used: loading it takes seconds

    _check_names(models, optimizers)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    with _single_process_quiet():
        dcp.save(_state(models, optimizers), checkpoint_id=str(folder))
    torch.save(extra_state, folder / f"extra_rank{rank()}.pt")
    write_manifest(folder)
    barrier()  # the folder is complete on every rank before anyone reports it
    return folder


def manifest_name(r: int) -> str:
    return f"manifest_rank{r}.json"


def _own_files(folder: Path, r: int) -> list[Path]:
    """The files rank `r` wrote into `folder` (DCP names a rank's shards `__{r}_{i}.distcp`)."""
    files = sorted(folder.glob(f"__{r}_*.distcp")) + [folder / f"extra_rank{r}.pt"]
    if r == 0:
        files.append(folder / ".metadata")
    return [f for f in files if f.is_file()]


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_manifest(folder: str | Path) -> Path:
    """This rank's manifest: bytes and CRC-32 of the files it wrote, written after them (tmp +
    rename), so a manifest only exists for a rank whose save completed."""
    folder = Path(folder)
    r = rank()
    files = {f.name: {"bytes": f.stat().st_size, "crc32": file_crc32(f)} for f in _own_files(folder, r)}
    manifest = {"format": MANIFEST_FORMAT, "rank": r, "world_size": world_size(), "files": files}
    target = folder / manifest_name(r)
    tmp = folder / f".{target.name}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, target)
    return target


def verify_sharded(path: str | Path, *, share: tuple[int, int] | None = None) -> str | None:
    """What is wrong with the checkpoint folder `path` (naming the file), or None if it is good.

    Checks DCP's `.metadata`, every saved rank's manifest, and the size of every listed file (a
    `stat`, no reading). CRC-32s are compared for every file, or with `share=(rank, world)` for
    the files of saved ranks `s` with `s % world == rank` only: resuming ranks split the reading,
    and on the same world size each rank reads back just its own shards.
    """
    folder = Path(path)
    if not folder.is_dir():
        return f"{folder} is not a directory"
    if not (folder / ".metadata").is_file():
        return f"{folder / '.metadata'} is missing (DCP metadata)"
    first = folder / manifest_name(0)
    if not first.is_file():
        if not any(folder.glob("manifest_rank*.json")):
            # Written before checkpoints had manifests: loadable, but nothing to verify against.
            log.warning("%s has no manifest (an older checkpoint): loading it unverified", folder)
            return None
        return f"{first} is missing (the save did not complete)"
    try:
        saved_world = int(json.loads(first.read_text())["world_size"])
    except (ValueError, KeyError, TypeError) as e:
        return f"{first} is unreadable ({e})"
    for r in range(saved_world):
        manifest_path = folder / manifest_name(r)
        try:
            files = json.loads(manifest_path.read_text())["files"]
        except FileNotFoundError:
            return f"{manifest_path} is missing (rank {r} of {saved_world} did not complete its save)"
        except (ValueError, KeyError, TypeError) as e:
            return f"{manifest_path} is unreadable ({e})"
        for name, expected in files.items():
            file = folder / name
            if not file.is_file():
                return f"{file} is missing"
            size = file.stat().st_size
            if size != expected["bytes"]:
                return f"{file} has {size} bytes, its manifest says {expected['bytes']} (truncated or rewritten)"
            mine = share is None or r % share[1] == share[0]
            if mine and file_crc32(file) != expected["crc32"]:
                return f"{file} fails its CRC-32 check (the bytes changed after the save)"
    return None


def first_good_checkpoint(candidates: Iterable[Path]) -> Path | None:
    """The first of `candidates` (newest first) that every rank verifies (a collective: every rank
    passes the same list). A bad one is named in a warning and skipped; None without candidates.
    Raises CheckpointDamaged naming every folder when none is usable."""
    problems: list[str] = []
    for path in candidates:
        problem = verify_sharded(path, share=(rank(), world_size()))
        if _any_rank(problem is not None) == 0:
            return Path(path)
        problem = problem or f"{path}: another rank found a damaged file"
        log.warning("checkpoint %s is damaged, skipping it: %s", path, problem)
        problems.append(problem)
    if problems:
        listing = "; ".join(problems)
        raise CheckpointDamaged(f"no usable checkpoint to resume from ({listing}); move the damaged "
                                f"folders away to start over, or restore them")
    return None


def _any_rank(flag: bool) -> int:
    """1 if `flag` holds on any rank."""
    if not _distributed():
        return int(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def saved_world_size(path: str | Path) -> int | None:
    """World size a verified checkpoint was saved on (from rank 0's manifest), None without one."""
    try:
        return int(json.loads((Path(path) / manifest_name(0)).read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_sharded(path: str | Path, models: dict[str, nn.Module], optimizers: dict[str, Optimizer], *,
                 storage_reader: Any | None = None) -> dict[str, Any]:
    """Restore models and optimizers in place (a collective); return this rank's extra state.

    DCP reads each rank's shards straight from `path` (no copy). A rank with no `extra_rank{r}.pt`
    (resuming on more ranks than saved) gets rank 0's, with a warning: per-rank streams such as
    RNG states then repeat. `storage_reader`: a DCP StorageReader for `path` (tests count bytes).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    _check_names(models, optimizers)
    folder = Path(path)
    if not (folder / ".metadata").is_file():
        raise FileNotFoundError(f"no DCP checkpoint at {folder} (missing {folder / '.metadata'})")
    state = _state(models, optimizers)
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(folder), storage_reader=storage_reader)
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


def shard_numel(n_params: int, world_size: int) -> int:
    """Elements of the largest rank's shard (FSDP2 pads each tensor's dim 0 to the world size)."""
    return -(-n_params // world_size)


__all__ = ["CheckpointDamaged", "CheckpointIO", "checkpoint_io_cost", "checkpointed_bytes_per_param", "first_good_checkpoint",
           "load_sharded", "save_sharded", "saved_world_size", "shard_numel", "verify_sharded", "write_manifest"]


# ---------------------------------------------------------------------------------------------
# What a checkpoint costs in bytes (the dry-run plan prints it; tests compare it with real folders)

FP32_BYTES = 4
ADAMW_STATE_BYTES = 8  # exp_avg + exp_avg_sq, fp32, sharded like the parameter


@dataclass(frozen=True)
class CheckpointIO:
    """Bytes of one checkpoint and of resuming from it, by the rules of `save_sharded` /
    `load_sharded` and of the Ray sink (`wmtp.orchestration.reporting.RayCheckpointSink`)."""

    checkpoint_bytes: int  # DCP shards of every checkpointed model and optimizer (all ranks)
    read_per_rank_bytes: int  # resume: DCP reads this rank's shards, nothing else
    download_per_node_bytes: int  # resume from remote storage: one copy per node, shared by its ranks
    disk_per_node_bytes: int  # local disk a node needs for checkpoints at the worst moment
    storage: str  # how the storage path is reached (node-local, shared filesystem, remote)

    def as_dict(self) -> dict[str, float | str]:
        gib = 1024 ** 3
        return {"storage": self.storage, "checkpoint_gib": self.checkpoint_bytes / gib,
                "resume_read_per_rank_gib": self.read_per_rank_bytes / gib,
                "resume_download_per_node_gib": self.download_per_node_bytes / gib,
                "disk_per_node_gib": self.disk_per_node_bytes / gib}


def checkpointed_bytes_per_param(trained: bool, dtype_bytes: int = FP32_BYTES) -> int:
    """A trained model: fp32 master weights + AdamW's two moments; a checkpointed model without an
    optimizer (the critic snapshot): its own dtype."""
    return dtype_bytes + ADAMW_STATE_BYTES if trained else dtype_bytes


def checkpoint_io_cost(models: list[tuple[int, int]], *, world_size: int, replicas: int, storage_path: str | None,
                       keep_checkpoints: int) -> CheckpointIO:
    """`models`: `(n_params, bytes per parameter)` of each model the checkpoint holds.

    - Each rank's DCP shards are `1 / (world_size / replicas)` of every model (FSDP2 pads dim 0:
      `shard_numel`); a resume reads exactly those (`load_sharded`), on any storage.
    - A save stages each rank's shards in a local temporary folder before Ray copies them to the
      storage path; DCP writes a tensor replicated over HSDP groups once, so a node (one group per
      node) stages `1 / replicas` of the checkpoint.
    - Storage: a URI (`s3://` ...) is remote: a resume downloads the checkpoint once per node
      (`RayCheckpointSink._materialise`), kept until the run ends. An absolute path on more than
      one node is a shared filesystem: read in place, nothing on the node's disk. One node
      without a URI (the default `<output_dir>/ray`): node-local, the node's disk holds
      `keep_checkpoints + 1` checkpoints while Ray registers a new one (then prunes), besides
      the staging copy.
    """
    from wmtp.config.topology import SHARED_SCHEMES

    group = max(world_size // max(replicas, 1), 1)
    total = sum(n * b for n, b in models)
    per_rank = sum(shard_numel(n, group) * b for n, b in models)
    staging = -(-total // max(replicas, 1))
    if storage_path is not None and storage_path.startswith(SHARED_SCHEMES):
        return CheckpointIO(total, per_rank, total, staging + total, "remote (one download per node at resume)")
    if replicas > 1:
        return CheckpointIO(total, per_rank, 0, staging, "shared filesystem (read in place)")
    return CheckpointIO(total, per_rank, 0, staging + (keep_checkpoints + 1) * total,
                        f"node-local (keep_checkpoints={keep_checkpoints} + 1 kept while a new one registers)")

"""Process-group set-up and global reductions (torch.distributed only; no ray).

Every helper is a no-op (returns its input's value) when torch.distributed is not initialised, so
the same recipe code runs in one process (tests, debugging) and on N ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, world size, rank on its node, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device_type: str | None = None) -> DistEnv:
        """From the initialised process group, else `RANK`/`WORLD_SIZE`/`LOCAL_RANK` (torchrun, Ray
        Train), else a single process. device_type None: `cuda:{local_rank}` when CUDA is there."""
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if is_distributed():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device("cuda", local_rank) if device_type == "cuda" else torch.device(device_type)
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def init_process_group_if_needed(backend: str | None = None, timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group described by the environment when `WORLD_SIZE > 1` and none exists.

    backend None: NCCL when CUDA is available, else gloo. Sets the CUDA device to `LOCAL_RANK`.
    A launcher (Ray Train, torchrun, tests) that already initialised the group is left alone.
    """
    env = DistEnv.from_env()
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if not is_distributed() and env.world_size > 1:
        backend = backend or ("nccl" if env.device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        env = DistEnv.from_env()
    return env


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """In-place sum over ranks; returns `tensor` (unchanged in one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def global_sum(tensor: Tensor) -> Tensor:
    """Sum over ranks of a copy (the input is untouched; autograd does not flow through it)."""
    return all_reduce_sum(tensor.detach().clone())


def global_mean(tensor: Tensor) -> Tensor:
    """Mean over ranks of a copy (float)."""
    return global_sum(tensor.float()) / world_size()


def global_max(tensor: Tensor) -> Tensor:
    """Element-wise max over ranks of a copy."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


__all__ = [
    "DistEnv", "all_reduce_sum", "barrier", "global_max", "global_mean", "global_sum",
    "init_process_group_if_needed", "is_distributed", "rank", "world_size",
]

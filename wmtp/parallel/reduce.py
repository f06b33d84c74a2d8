"""Process-group set-up and global reductions (torch.distributed only; no ray).

Every helper is a no-op (returns its input's value) when torch.distributed is not initialised, so
the same recipe code runs in one process (tests, debugging) and on N ranks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, world size, rank on its node, and its device.

    gpu_policies: a CPU process standing in for a GPU rank (the memory trace, `wmtp.trace`): FSDP2
    shards with bf16 all-gathers and fp32 reduction and AdamW is the fused one, as on CUDA."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    gpu_policies: bool = False

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


def process_layout(use_gpu: bool = False) -> DistEnv:
    """This process's rank, world size and device: the GPU of `LOCAL_RANK` when asked for and
    present, else the CPU."""
    env = DistEnv.from_env("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    return env


def global_sum(tensor: Tensor, layout: DistEnv | None = None) -> Tensor:
    """Sum over ranks of a copy (the input is untouched; autograd does not flow through it).
    With the `layout` of one process: `tensor` itself. Float64/long stay exact."""
    if layout is not None and not layout.distributed:
        return tensor
    return all_reduce_sum(tensor.detach().clone())


def reduce_fn(layout: DistEnv):
    """The `reduce_fn` callback of the weighting math (None when there is nothing to reduce)."""
    return (lambda t: global_sum(t, layout)) if layout.distributed else None


def reduce_max_fn(layout: DistEnv):
    """All-reduce MAX of a copy (the weighting math's `reduce_max_fn`; None in one process)."""
    return global_max if layout.distributed else None


def global_max_value(x: float, layout: DistEnv) -> float:
    """The largest `x` over ranks (a host number, e.g. the stalest micro-batch of the step)."""
    if not layout.distributed:
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64, device=layout.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def per_rank_values(values: Mapping[str, Tensor | float], layout: DistEnv) -> dict[str, Tensor]:
    """Every rank's `values` (0-dim, this rank's own) under per-rank names `worker/<r>/<name>`, on
    every rank (one all_gather of a float64 vector: every rank calls it, with the same keys).
    `{}` in one process, where the global values are the rank's (docs/TRACKING.md lists them)."""
    if not layout.distributed:
        return {}
    keys = list(values)
    mine = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=layout.device).reshape(())
                        for k in keys])
    parts = [torch.empty_like(mine) for _ in range(layout.world_size)]
    dist.all_gather(parts, mine)
    return {f"worker/{r}/{k}": parts[r][i] for r in range(layout.world_size) for i, k in enumerate(keys)}


def gather_fixed(x: Tensor, length: int, layout: DistEnv) -> Tensor:
    """Every rank's 1-D `x` (at most `length` values) zero-padded to `length` and concatenated:
    `[world_size * length]`. No size exchange, so no host sync (a step's metrics); callers mark
    their real entries themselves."""
    if x.numel() > length:
        raise ValueError(f"gather_fixed: {x.numel()} values do not fit length {length}")
    if not layout.distributed:
        return x
    padded = torch.zeros(length, dtype=x.dtype, device=x.device)
    padded[:x.numel()] = x
    parts = [torch.empty_like(padded) for _ in range(layout.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)


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
    "DistEnv", "all_reduce_sum", "barrier", "gather_cat", "global_max", "global_max_value", "global_mean",
    "global_sum", "init_process_group_if_needed", "is_distributed", "per_rank_values", "process_layout", "rank",
    "reduce_fn", "reduce_max_fn", "world_size",
]

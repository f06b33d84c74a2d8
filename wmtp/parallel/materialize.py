"""Build on the meta device, then shard, then load: how a distributed FSDP2 run gets its models.

1. The model is created on the meta device (shapes only, no memory).
2. Activation checkpointing and FSDP2 are applied to it (`wmtp.parallel.build.shard_model`): the
   parameters become DTensors of meta shards.
3. `to_empty(device)` allocates this rank's shards only (1/N of the model per rank).
4. `load_full_tensors`: rank 0 produces the full tensors one at a time, in state-dict order —
   read from a checkpoint (`wmtp.checkpoint.read_model_state` / `read_value_state`: rank 0
   alone reads the files) or initialised from the seed on its device (`seeded_tensors`: the same
   draws, in the same order, as `init_weights` on one process, so the same seed gives the same
   full weights) — and `distribute_tensor` scatters each into the ranks' shards (HSDP: broadcast
   across the replica groups, then scattered within each). The other ranks read no file
   and hold no full tensor beyond the scatter of the current one.

Host memory at load (the rule `load_host_bytes` states and the dry-run prints): rank 0 holds the
checkpoint's state dict as read (≤ 4 bytes a parameter) while it loads that model, dropping each
tensor once it is scattered; models load one after another. While a tensor is scattered each rank
holds two fp32 copies of it (rank 0's cast, `distribute_tensor`'s padded chunks) on its device.
Seeded init reads nothing and holds one tensor at a time, on rank 0's device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

FP32_BYTES = 4

# Called on rank 0: returns `take(key) -> full tensor`, asked once per parameter in the model's
# order (a state dict's `pop`, so each tensor is dropped once it is scattered).
TensorSource = Callable[[], Callable[[str], Tensor]]

if TYPE_CHECKING:
    from wmtp.model.transformer import Transformer
    from wmtp.model.value import ValueModel
_Built = TypeVar("_Built", "Transformer", "ValueModel")


def seeded_tensors(model: Transformer | ValueModel, seed: int, device: torch.device | str) -> Callable[[str], Tensor]:
    """`take(key)`: the full tensor of each parameter of `model` (a Transformer or ValueModel, meta
    or sharded: only names and shapes are read), initialised on `device` exactly as
    `torch.manual_seed(seed); model.init_weights()` would, one at a time, in `named_parameters` order."""
    torch.manual_seed(seed)
    order = iter(model.named_parameters())

    def take(key: str) -> Tensor:
        name, p = next(order)
        if name != key:
            raise RuntimeError(f"seeded init out of order: {key!r} asked, {name!r} next")
        t = torch.empty(p.shape, dtype=p.dtype, device=device)
        model.init_parameter(name, t)
        return t
    return take


def building_on_fake_tensors() -> bool:
    """True under the memory trace's FakeTensorMode (`wmtp.trace.memory`)."""
    from torch._guards import detect_fake_mode

    return detect_fake_mode() is not None


def build_sharded(model: _Built, shard: Callable[[_Built], _Built], device: torch.device,
                  source: TensorSource | None) -> _Built:
    """A meta-built `model` → `shard(model)` (activation checkpointing + FSDP2) → this rank's
    shards allocated on `device` → filled from `source`, called on rank 0 only (None elsewhere).

    Under the memory trace (fake tensors, which `to_empty` cannot swap) the model is allocated
    first, then sharded, as `CriticSnapshot` does: fake tensors cost nothing."""
    from wmtp.model.transformer import allocate_empty
    from wmtp.model.value import ValueModel

    if building_on_fake_tensors():
        allocate_empty(model, device)
        model = shard(model)
    else:
        model = shard(model)
        model.to_empty(device=device)
    load_full_tensors(model, source)
    backbone = model.backbone if isinstance(model, ValueModel) else model
    backbone.init_rope()  # non-persistent buffers: recomputed, never loaded
    return model


@torch.no_grad()
def load_full_tensors(model: nn.Module, source: TensorSource | None) -> int:
    """Fill every parameter of an allocated (FSDP-sharded or plain) `model` from full tensors that
    `source()` gives on rank 0, one at a time (a collective: every rank calls it; `source` is
    None off rank 0). Returns the largest full tensor's fp32 bytes (rank 0's transient).

    A failure of `source()` on rank 0 (a bad checkpoint) is raised on every rank, before any
    tensor moves. Each tensor is cast to the parameter's dtype and device on rank 0, scattered by
    `distribute_tensor` into the shards (its placements: Shard(0), HSDP Replicate + Shard(0)),
    then dropped; the other ranks pass an uninitialised stand-in of the full shape (only its padded
    chunks are copied, `SCATTER_COPIES`)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    distributed = dist.is_available() and dist.is_initialized()
    is_main = not distributed or dist.get_rank() == 0
    params = dict(model.named_parameters())
    take: Callable[[str], Tensor] | None = None
    error: BaseException | None = None
    if is_main:
        try:
            assert source is not None, "rank 0 loads from a source"
            take = source()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    if distributed:
        flag = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(flag, src=0)
        if flag[0] is not None and error is None:
            raise RuntimeError(f"rank 0 could not read the weights to load: {flag[0]}")
    if error is not None:
        raise error
    largest = 0
    for key, param in params.items():
        full = None
        if take is not None:  # rank 0
            full = take(key)
            if tuple(full.shape) != tuple(param.shape):
                raise RuntimeError(f"{key}: full tensor {tuple(full.shape)} != parameter {tuple(param.shape)}")
            largest = max(largest, full.numel() * FP32_BYTES)
        local = param.to_local() if isinstance(param, DTensor) else param
        if full is not None:  # rank 0
            full = full.to(device=local.device, dtype=param.dtype)
        else:
            full = torch.empty(param.shape, dtype=param.dtype, device=local.device)
        if isinstance(param, DTensor):
            shards = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=0)
            local.copy_(shards.to_local())
            del shards
        else:
            if distributed:
                dist.broadcast(full, src=0)
            param.copy_(full)
        del full
    return largest


# Full-size fp32 tensors a rank holds while one tensor is scattered: rank 0's cast of it, and the
# padded chunks `distribute_tensor` cuts from the full tensor on every rank (a copy).
SCATTER_COPIES = 2


def load_host_bytes(models: list[tuple[int, int, bool]], *, ranks_on_node: int, transients_on_host: bool) -> int:
    """Peak host bytes on the node of rank 0 while `build_sharded` loads `models` one after
    another, each `(n_params, largest tensor's n_params, from_checkpoint)`: the rule of the code
    above. From a checkpoint, rank 0 holds the state dict as read (at most fp32: 4 bytes a
    parameter; each tensor dropped once scattered). While a tensor is scattered every rank holds
    `SCATTER_COPIES` fp32 copies of it: host memory on CPU runs (`transients_on_host`), device
    memory on GPUs. Seeded init reads nothing. The shards themselves are not counted (the
    device's). Other nodes hold no full tensor outside the scatter."""
    peak = 0
    for n_params, largest, from_checkpoint in models:
        held = n_params * FP32_BYTES if from_checkpoint else 0
        if transients_on_host:
            held += ranks_on_node * SCATTER_COPIES * largest * FP32_BYTES
        peak = max(peak, held)
    return peak


__all__ = ["build_sharded", "building_on_fake_tensors", "load_full_tensors", "load_host_bytes", "seeded_tensors"]

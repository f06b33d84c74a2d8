"""How models are parallelised: activation checkpointing and FSDP2, applied from outside the model
in this order (torchtitan's `parallelize`):

1. `apply_activation_checkpointing(model)`: per block, composable (hooks), so parameter names and
   state-dict keys do not change.
2. `apply_fsdp(model, ...)`: `fully_shard` per trunk block, per MTP head block (a value model: per
   block and the value head), the root last.

Gradient accumulation under HSDP (`fsdp_mesh` with replicas > 1): `accumulate` lets every
micro-batch's backward reduce-scatter within the node and all-reduce across the replicas (nodes)
only in the step's last backward, once per optimizer step (docs/DISTRIBUTED.md).

Gradient reduction is a **sum** over ranks (divide factor 1, SUM collectives): wmtp's losses
divide by global token counts (docs/MATH.md), so summing per-rank gradients gives the exact
global gradient on any world size. Standard FSDP averaging would shrink it by the world size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from wmtp.model.transformer import Transformer
from wmtp.model.value import ValueModel

T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """Every transformer block of a policy (trunk layers, then extra heads) or a value backbone."""
    if isinstance(model, ValueModel):
        model = model.backbone
    if not isinstance(model, Transformer):
        raise TypeError(f"expected a Transformer or ValueModel, got {type(model).__name__}")
    return [*model.layers, *model.extra_heads]


def apply_activation_checkpointing(model: M) -> M:
    """Recompute each block's activations in backward (keeps only block inputs).

    Uses the composable `checkpoint` (forward hooks around the block), not a wrapper module, so
    parameter FQNs, optimizer state keys and checkpoints are the same with and without it.
    """
    from torch.distributed._composable import checkpoint

    for block in transformer_blocks(model):
        checkpoint(block)
    return model


def apply_fsdp(model: M, *, mesh: DeviceMesh | None = None, mixed_precision: bool,
               reshard_after_forward: bool = True) -> M:
    """Shard with FSDP2: one unit per block (trunk and heads), value head, then the root.

    mixed_precision: bf16 parameters for compute, fp32 gradient reduction; the sharded fp32
        parameters stay the optimizer's master weights.
    reshard_after_forward: free gathered block parameters after forward (re-gather in backward);
        the root unit keeps its (embedding, norm, output) gathered, as FSDP2 does for roots.
    The root's `output.weight` is therefore usable by the chunked loss right after forward.
    """
    mp_policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                 if mixed_precision else MixedPrecisionPolicy())
    for block in transformer_blocks(model):
        fully_shard(block, reshard_after_forward=reshard_after_forward, mesh=mesh, mp_policy=mp_policy)
    if isinstance(model, ValueModel):
        fully_shard(model.value_head, reshard_after_forward=reshard_after_forward, mesh=mesh, mp_policy=mp_policy)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # Factor 1 with plain SUM collectives (gloo has no PREMUL_SUM; NCCL's SUM is zero-copy).
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def accumulate(models: list[nn.Module], micro_batches: list[T]) -> Iterator[T]:
    """Yield `micro_batches` in order; an FSDP2 model's backward all-reduces its gradients across
    HSDP replicas only in the last one (`set_requires_all_reduce`).

    Before that FSDP2 sums each micro-batch's reduce-scattered (node-local) gradient into a
    sharded fp32 buffer per parameter group (its `_partial_reduce_output`: the size of the sharded
    gradients, which it replaces until the last backward) and the cross-node all-reduce runs once,
    on the sum: 1/grad_accum of the bytes per-micro-batch syncing sends. The sum is the same
    gradient (SUM collectives are linear). Full shard (one replica) and replicated models: no-op.
    """
    sharded = [m for m in models if isinstance(m, FSDPModule)]
    last = len(micro_batches) - 1
    try:
        for i, micro in enumerate(micro_batches):
            for model in sharded:
                model.set_requires_all_reduce(i == last)
            yield micro
    finally:  # an interrupted step leaves the models syncing every backward, the FSDP2 default
        for model in sharded:
            model.set_requires_all_reduce(True)


def hsdp_sync_cost(trained_params: int, *, world_size: int, replicas: int, grad_accum: int) -> dict[str, float | str]:
    """What HSDP's gradient all-reduce moves across nodes per optimizer step (the dry run prints it).

    Each rank holds `1 / (world_size / replicas)` of every trained model's fp32 gradients and
    all-reduces them with its R - 1 peers on the other nodes; a ring all-reduce sends
    `2 (R - 1) / R` of the buffer per rank, so a node sends `2 (R - 1) / R × 4 × trained_params`
    bytes per all-reduce. `accumulate` makes that once per step; syncing every micro-batch (FSDP2's
    default) would be `grad_accum` times as much.
    """
    gib = 1024**3
    per_sync = 2 * (replicas - 1) / replicas * 4 * trained_params
    return {"mechanism": "FSDP2 all-reduce across the replicate dimension, in the last micro-batch's backward",
            "all_reduces_per_step": 1.0, "per_step_per_node_gib": per_sync / gib,
            "per_micro_batch_sync_would_be_gib": grad_accum * per_sync / gib}


def uses_mixed_precision(precision: str, device: torch.device, gpu_policies: bool = False) -> bool:
    """FSDP2 bf16 parameters + fp32 reduction: bf16 runs on CUDA (and the memory trace of one,
    `gpu_policies`: fake CPU tensors sharded with the GPU run's policies)."""
    return precision == "bf16" and (device.type == "cuda" or gpu_policies)


_MESHES: dict[tuple, DeviceMesh] = {}


def fsdp_mesh(device_type: str, world_size: int, replicas: int = 1) -> DeviceMesh:
    """The device mesh FSDP2 shards over (one per process group, created once).

    replicas=1: a flat mesh, full shard over every rank. replicas=R > 1: HSDP, a 2-D mesh
    `(replicate=R, shard=world_size // R)`: parameters are sharded within a group of
    `world_size // R` consecutive ranks (one node) and replicated across the R groups, so the
    all-gathers stay on the node's NVLink and only the gradient all-reduce crosses nodes.
    Created outside any FakeTensorMode (the memory trace calls it before tracing).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if replicas < 1 or world_size % replicas:
        raise ValueError(f"orchestration.fsdp_replicas={replicas} must divide the world size {world_size}")
    key = (id(dist.distributed_c10d._get_default_group()), device_type, world_size, replicas)
    if key not in _MESHES:
        if replicas == 1:
            _MESHES[key] = init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))
        else:
            _MESHES[key] = init_device_mesh(device_type, (replicas, world_size // replicas),
                                            mesh_dim_names=("replicate", "shard"))
    return _MESHES[key]


__all__ = ["accumulate", "apply_activation_checkpointing", "apply_fsdp", "fsdp_mesh", "hsdp_sync_cost", "transformer_blocks",
           "uses_mixed_precision"]

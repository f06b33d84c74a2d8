"""Full tensors of a sharded model, one at a time: publish and export never hold a whole model
on one device.

FSDP2 parameters are DTensors (`Shard(0)` over the mesh); `full_tensor()` all-gathers ONE of them
onto the device (a collective: every rank iterates in the same order; the local shard is cast to
the target dtype first, so at bf16 the gather moves half the bytes) and moves it straight to host
memory, then the device copy is freed
before the next. The largest transient on a GPU is one tensor (at 7B, the 32000×4096 embedding:
0.5 GiB fp32), not the model (≈ 27 GiB). Plain tensors (one process, replicated models) are only
cast and copied.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Literal, overload

import torch
from torch import Tensor, nn


def _items(source: nn.Module | Mapping[str, Tensor]):
    return source.state_dict().items() if isinstance(source, nn.Module) else source.items()


@overload
def iter_full_tensors(source: nn.Module | Mapping[str, Tensor], *, dtype: torch.dtype | None = None,
                      keep: Literal[True] = True) -> Iterator[tuple[str, Tensor]]: ...
@overload
def iter_full_tensors(source: nn.Module | Mapping[str, Tensor], *, dtype: torch.dtype | None = None,
                      keep: bool) -> Iterator[tuple[str, Tensor | None]]: ...
def iter_full_tensors(source: nn.Module | Mapping[str, Tensor], *, dtype: torch.dtype | None = None,
                      keep: bool = True) -> Iterator[tuple[str, Tensor | None]]:
    """`(key, full CPU tensor)` per state-dict entry of `source`, gathered one at a time.

    dtype: cast floating tensors to it (None: keep each tensor's dtype).
    keep: False on ranks that only take part in the gathers (they get `(key, None)`).
    """
    for key, value in _items(source):
        value = value.detach()
        fresh = hasattr(value, "full_tensor")  # a gathered tensor is a new one
        if dtype is not None and value.is_floating_point() and value.dtype != dtype:
            value = value.to(dtype)  # cast the local shard first: the all-gather moves compute-dtype bytes
            fresh = True
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        if not keep:
            del full
            yield key, None
            continue
        # Host memory, and never a view of a parameter the learner goes on updating.
        yield key, full if fresh and full.device.type == "cpu" else full.to("cpu", copy=True)


def gather_state_dict(source: nn.Module | Mapping[str, Tensor], *, dtype: torch.dtype | None = None,
                      keep: bool = True) -> dict[str, Tensor] | None:
    """The whole state dict on the host of the ranks with `keep` (None elsewhere), built one
    tensor at a time by `iter_full_tensors` (every rank must call it when `source` is sharded)."""
    out = {key: t for key, t in iter_full_tensors(source, dtype=dtype, keep=keep) if t is not None}
    return out if keep else None  # (without `keep` every t is None)


def state_dict_bytes(source: nn.Module | Mapping[str, Tensor], dtype: torch.dtype | None = None) -> int:
    """Bytes of the full state dict of `source` in `dtype` (each tensor's own dtype when None)."""
    total = 0
    for _, value in _items(source):
        size = dtype.itemsize if dtype is not None and value.is_floating_point() else value.element_size()
        total += value.numel() * size
    return total


__all__ = ["gather_state_dict", "iter_full_tensors", "state_dict_bytes"]

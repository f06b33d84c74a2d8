"""GPU memory in the step metrics, and the CUDA caching allocator's configuration.

    configure_allocator()                 expandable segments, unless the user configured it
    gpu_memory(device) -> {name: GiB}     this rank's allocated / reserved / peak; {} off CUDA

Why expandable segments (docs/MEMORY.md "The allocator"): FSDP2 all-gathers and frees a block's
parameters per layer, and the chunked loss allocates per chunk; with fixed-size segments the
freed blocks fragment the reserve (reserved ≫ allocated), with expandable segments a segment
grows and shrinks in place, so reserved stays near the peak allocated.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

import torch

ALLOCATOR_SETTINGS = "expandable_segments:True"
ALLOCATOR_ENV = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
GIB = 1024**3


def configure_allocator(env: dict[str, str] | None = None, cuda: Any = None) -> str | None:
    """Expandable segments for this process (and, through the environment, its children) unless
    the user set `PYTORCH_CUDA_ALLOC_CONF` / `PYTORCH_ALLOC_CONF`; the settings applied, or None.
    Takes effect for segments allocated afterwards, so call it before the models are built."""
    environ: MutableMapping[str, str] = os.environ if env is None else env
    cuda = torch.cuda if cuda is None else cuda
    if any(environ.get(k) for k in ALLOCATOR_ENV) or not cuda.is_available():
        return None
    environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOCATOR_SETTINGS
    cuda.memory._set_allocator_settings(ALLOCATOR_SETTINGS)
    return ALLOCATOR_SETTINGS


def gpu_memory(device: torch.device, cuda: Any = None) -> dict[str, float]:
    """This rank's CUDA memory in GiB: `gpu_mem_allocated_gib` (live tensors), `gpu_mem_reserved_gib`
    (held by the caching allocator), `gpu_mem_peak_gib` / `gpu_mem_peak_reserved_gib` (maxima since
    the start); `{}` on any other device, so CPU runs log nothing."""
    if device.type != "cuda":
        return {}
    cuda = torch.cuda if cuda is None else cuda
    return {"gpu_mem_allocated_gib": cuda.memory_allocated(device) / GIB,
            "gpu_mem_reserved_gib": cuda.memory_reserved(device) / GIB,
            "gpu_mem_peak_gib": cuda.max_memory_allocated(device) / GIB,
            "gpu_mem_peak_reserved_gib": cuda.max_memory_reserved(device) / GIB}


__all__ = ["ALLOCATOR_SETTINGS", "configure_allocator", "gpu_memory"]

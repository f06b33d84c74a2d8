"""Mixed precision by autocast: compute in bf16 where supported, parameters stay fp32.

Nothing here casts a parameter: the optimizer updates fp32 master weights and autocast casts
matmul inputs on the fly, so gradients arrive in fp32 too. (FSDP2's MixedPrecisionPolicy, applied
by wmtp.parallel, is the sharded equivalent on GPU.) "bf16" on a CUDA device without bf16 support
(pre-Ampere) falls back to fp32 with a warning rather than silently using fp16 without a scaler.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager

import torch

log = logging.getLogger(__name__)


def _fp32(device_type: str) -> ContextManager:
    return contextlib.nullcontext()


def _bf16(device_type: str) -> ContextManager:
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("train.precision=bf16 but this GPU has no bf16 support: running in fp32")
        return contextlib.nullcontext()
    if device_type not in ("cuda", "cpu", "xpu", "mps"):
        raise ValueError(f"bf16 autocast is not available on device type {device_type!r}")
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


PRECISIONS: dict[str, Callable[[str], ContextManager]] = {"fp32": _fp32, "bf16": _bf16}


def autocast_context(device_type: str, precision: str = "fp32") -> ContextManager:
    """Context for forward + loss: `fp32` (no autocast) or `bf16` (bf16 autocast).

    device_type: "cpu", "cuda", ... (`tensor.device.type`). CPU bf16 works but is slow on CPUs
    without AMX/AVX512-BF16: the config default is fp32.
    """
    try:
        factory = PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"train.precision: unknown {precision!r}; allowed: {sorted(PRECISIONS)}") from None
    return factory(device_type)


COMPUTE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def compute_dtype(precision: str = "fp32") -> torch.dtype:
    """The dtype forwards compute in under `autocast_context(precision)`: the dtype that frozen and
    snapshot models (the critic snapshot, the Rho-1 reference, experience replicas) are stored in,
    and the dtype weights are published in."""
    try:
        return COMPUTE_DTYPES[precision]
    except KeyError:
        raise ValueError(f"train.precision: unknown {precision!r}; allowed: {sorted(COMPUTE_DTYPES)}") from None

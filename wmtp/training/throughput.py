"""Tokens/s (EMA-smoothed) and model FLOPs utilisation (MFU).

`update(tokens)` takes the step's token count as a Python int (the collator knows it), so the
meter never touches a tensor and adds no host sync. Wall time between updates is measured on the
host; on GPU the logging `.item()` every `log_every` steps keeps host and device in step, so the
smoothed rate tracks the device's rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Dense bf16 tensor-core peak FLOP/s per device, matched by substring of
# torch.cuda.get_device_name() (most specific first: "A100" also contains "A10").
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
]


def peak_flops(device_name: str | None) -> float | None:
    """Peak bf16 FLOP/s for a device name (`torch.cuda.get_device_name()`); None if unknown/CPU."""
    if not device_name:
        return None
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def current_device_peak_flops() -> float | None:
    """Peak of CUDA device 0, or None on CPU."""
    import torch

    return peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None


class ThroughputMeter:
    """EMA of tokens/s across steps, and MFU when FLOPs per token and the peak are known.

    tokens passed to `update` are those processed by all `n_devices` together (the global step),
    so MFU = tokens_per_s * flops_per_token / (peak_flops * n_devices); FLOPs per token come from
    the model's shapes (`wmtp.model.memory.flops_per_token`).
    """

    def __init__(
        self,
        *,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        n_devices: int = 1,
        smoothing: float = 0.9,
        clock: Callable[[], float] = time.perf_counter,
        memory: Callable[[], dict[str, float]] | None = None,
    ):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.n_devices = n_devices
        self.smoothing = smoothing
        self.clock = clock
        self.memory = memory  # GPU memory metrics logged beside the rate (wmtp.training.device_memory)
        self.total_tokens = 0
        self._last: float | None = None
        self._rate: float | None = None

    def start(self) -> None:
        """Mark the beginning of the first measured step (otherwise the first update only does)."""
        self._last = self.clock()

    def update(self, tokens: int) -> None:
        now = self.clock()
        self.total_tokens += tokens
        if self._last is not None and now > self._last:
            rate = tokens / (now - self._last)
            self._rate = rate if self._rate is None else self.smoothing * self._rate + (1 - self.smoothing) * rate
        self._last = now

    @property
    def tokens_per_s(self) -> float | None:
        return self._rate

    @property
    def mfu(self) -> float | None:
        if self._rate is None or not self.flops_per_token or not self.peak_flops:
            return None
        return self._rate * self.flops_per_token / (self.peak_flops * self.n_devices)

    def metrics(self, prefix: str = "perf/") -> dict[str, float]:
        """`{perf/tokens_per_s, perf/mfu, perf/tokens_seen}` for whatever is known."""
        out = {f"{prefix}tokens_seen": float(self.total_tokens)}
        if self._rate is not None:
            out[f"{prefix}tokens_per_s"] = self._rate
        if self.mfu is not None:
            out[f"{prefix}mfu"] = self.mfu
        if self.memory is not None:
            out.update(self.memory())
        return out

    def state_dict(self) -> dict[str, int]:
        return {"total_tokens": self.total_tokens}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total_tokens = int(state["total_tokens"])

"""What a step trains on, counted once (`count_step`), and the rates and totals logged from it
(`ThroughputMeter`: tokens/s, trained targets/s, MFU).

Counting adds no host sync and no collective on a step that logs nothing: `count_step` returns a
device tensor, the meter adds it up on its rank, and `metrics()` (called on every rank at the
same, logging steps) sums every rank's counts in one all-reduce and reads them once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from wmtp.losses.alignment import count_valid_targets

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
    return peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None


def count_step(attention_masks: Sequence[Tensor], labels: Sequence[Tensor]) -> Tensor:
    """This rank's step, counted: `[2]` long on the masks' device, `(tokens, targets)`.

    tokens: real (non-padding) tokens of every micro-batch the step forwarded (`attention_masks`,
    each `[B, S]`; prompts included) — what the hardware processed. targets: the step's trained
    targets, head 1's valid targets of the `labels` (each `[B, S]`, -100 = none) the model learns
    from — the policy's labels (incorrect solutions masked under `data.samples=correct`), or the
    critic's responses (one trained state per response token). Every recipe counts with this.
    """
    tokens = sum(m.sum() for m in attention_masks)
    targets = sum(count_valid_targets(lab, 1)[0] for lab in labels)
    return torch.stack([torch.as_tensor(tokens), torch.as_tensor(targets)]).long()


class ThroughputMeter:
    """Real tokens and trained targets: per step, in total, and per second; MFU when FLOPs per
    token and the peak are known.

    `update(count)` adds one step's `count_step` (this rank's; `trained=False` for a batch the
    non-finite guard skipped: its tokens ran, its targets trained nothing). `metrics()` sums the
    ranks with `sum_ranks` (an all-reduce SUM; identity in one process): every rank calls it at
    the same steps. Rates are over the window since the previous `metrics()` (or `start()`):
    global count ÷ wall time, so MFU = tokens_per_s · flops_per_token / (peak_flops · n_devices);
    FLOPs per token come from the model's shapes (`wmtp.model.memory.flops_per_token`).
    """

    def __init__(
        self,
        *,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        n_devices: int = 1,
        clock: Callable[[], float] = time.perf_counter,
        memory: Callable[[], dict[str, float]] | None = None,
        sum_ranks: Callable[[Tensor], Tensor] | None = None,
    ):
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.n_devices = n_devices
        self.clock = clock
        self.memory = memory  # GPU memory metrics logged beside the rate (wmtp.training.device_memory)
        self.sum_ranks = sum_ranks
        self.seen = torch.zeros(2, dtype=torch.long)  # this rank's (tokens, targets) since the run began
        self.last = torch.zeros(2, dtype=torch.long)  # ... of the last step
        self.window = torch.zeros(2, dtype=torch.long)  # ... since the last metrics()
        self._since: float | None = None
        self._rates: tuple[float, float] | None = None

    def start(self) -> None:
        """Mark the beginning of the first measured step (the first rate is measured from here)."""
        self._since = self.clock()

    def update(self, count: Tensor, trained: bool = True) -> None:
        """Add one step's `count_step` (no host sync: device tensors are added on the device)."""
        if not trained:
            count = count.clone()
            count[1] = 0
        self.seen, self.window = self.seen.to(count.device) + count, self.window.to(count.device) + count
        self.last = count

    @property
    def mfu(self) -> float | None:
        if self._rates is None or not self.flops_per_token or not self.peak_flops:
            return None
        return self._rates[0] * self.flops_per_token / (self.peak_flops * self.n_devices)

    def metrics(self) -> dict[str, float]:
        """Every rank's counts summed (one all-reduce, one host read), as
        `train/{tokens,targets}` (the last step), `perf/{tokens,targets}_seen` (the run),
        `perf/{tokens,targets}_per_s` (the window) and `perf/mfu`, plus the memory metrics."""
        now = self.clock()
        local = torch.cat([self.seen, self.last, self.window])
        tok_seen, tgt_seen, tok_step, tgt_step, tok_win, tgt_win = (
            self.sum_ranks(local) if self.sum_ranks is not None else local).tolist()
        if self._since is not None and now > self._since:
            self._rates = (tok_win / (now - self._since), tgt_win / (now - self._since))
        self._since, self.window = now, torch.zeros_like(self.window)
        out = {"train/tokens": float(tok_step), "train/targets": float(tgt_step),
               "perf/tokens_seen": float(tok_seen), "perf/targets_seen": float(tgt_seen)}
        if self._rates is not None:
            out["perf/tokens_per_s"], out["perf/targets_per_s"] = self._rates
        if self.mfu is not None:
            out["perf/mfu"] = self.mfu
        if self.memory is not None:
            out.update(self.memory())
        return out

    def state_dict(self) -> dict[str, int]:
        """This rank's totals (each rank's checkpoint keeps its own)."""
        tokens, targets = self.seen.tolist()
        return {"tokens": tokens, "targets": targets}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "total_tokens" in state:  # written before targets were counted: each rank's tokens × world size
            state = {"tokens": int(state["total_tokens"]) // self.n_devices, "targets": 0}
        self.seen = torch.tensor([int(state["tokens"]), int(state["targets"])], dtype=torch.long)

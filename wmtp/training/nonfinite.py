"""What to do when the loss is NaN/inf: stop with a clear message, or skip the batch and count.

In distributed runs pass the globally reduced loss so that every rank takes the same decision
(a rank that skips while another steps would desynchronise the collectives).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch

from wmtp.errors import WMTPUserError

log = logging.getLogger(__name__)

POLICIES = ("stop", "skip")


class NonFiniteLossError(WMTPUserError, RuntimeError):
    """Training stopped on a non-finite loss (the message is meant for the user)."""


class NonFiniteGuard:
    """`check(loss, step)` returns True when the batch must be skipped; raises to stop.

    policy: "stop" raises at the first non-finite loss; "skip" skips and counts, and raises once
        more than `max_skipped` batches were skipped.
    last_checkpoint: returns the last good checkpoint (e.g. `sink.latest`), named in the message.
    """

    def __init__(
        self,
        policy: str = "stop",
        max_skipped: int = 10,
        last_checkpoint: Callable[[], Path | None] | None = None,
    ):
        if policy not in POLICIES:
            raise ValueError(f"train.nonfinite: unknown policy {policy!r}; allowed: {list(POLICIES)}")
        if max_skipped < 0:
            raise ValueError(f"train.max_skipped_batches must be >= 0, got {max_skipped}")
        self.policy = policy
        self.max_skipped = max_skipped
        self.last_checkpoint = last_checkpoint
        self.skipped = 0

    def check(self, loss: float | torch.Tensor, step: int) -> bool:
        # A tensor costs one host sync; callers that already hold the float pass it instead.
        value = float(loss.detach().float().cpu()) if isinstance(loss, torch.Tensor) else float(loss)
        if math.isfinite(value):
            return False
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"non-finite loss ({value}) at step {step}; training stopped (train.nonfinite=stop). "
                f"{self._where()} Consider a lower optim.lr, optim.grad_clip, or train.nonfinite=skip."
            )
        self.skipped += 1
        if self.skipped > self.max_skipped:
            raise NonFiniteLossError(
                f"non-finite loss ({value}) at step {step}: {self.skipped} batches skipped, more than "
                f"train.max_skipped_batches={self.max_skipped}; training stopped. {self._where()}"
            )
        log.warning("non-finite loss (%s) at step %d: batch skipped (%d/%d)", value, step, self.skipped,
                    self.max_skipped)
        return True

    def _where(self) -> str:
        ckpt = self.last_checkpoint() if self.last_checkpoint is not None else None
        if ckpt is None:
            return "No checkpoint had been saved yet."
        return f"Last good checkpoint: {ckpt} (rerun the same command to resume from it)."

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped = int(state["skipped"])

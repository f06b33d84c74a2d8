"""What to do when the loss is NaN/inf: stop with a clear message, or skip the batch and count.

In distributed runs pass the globally reduced loss so that every rank takes the same decision
(a rank that skips while another steps would desynchronise the collectives).

A skipped batch leaves the weights as they were, but an accepted step with a finite loss can still
write non-finite weights (an overflowing update); every later batch is then skipped. So a run
stops after `max_consecutive` skips in a row, and `check_weights` refuses to checkpoint non-finite
weights: the checkpoint the messages call good never holds one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from wmtp.errors import WMTPUserError

log = logging.getLogger(__name__)

POLICIES = ("stop", "skip")


class NonFiniteLossError(WMTPUserError, RuntimeError):
    """Training stopped on a non-finite loss (the message is meant for the user)."""


class NonFiniteGuard:
    """`check(loss, step)` returns True when the batch must be skipped; raises to stop.

    policy: "stop" raises at the first non-finite loss; "skip" skips and counts, and raises once
        more than `max_skipped` batches were skipped in all, or `max_consecutive` in a row.
    last_checkpoint: returns the last good checkpoint (e.g. `sink.latest`), named in the message.
    """

    def __init__(
        self,
        policy: str = "stop",
        max_skipped: int = 10,
        last_checkpoint: Callable[[], Path | None] | None = None,
        max_consecutive: int = 5,
    ):
        if policy not in POLICIES:
            raise ValueError(f"train.nonfinite: unknown policy {policy!r}; allowed: {list(POLICIES)}")
        if max_skipped < 0:
            raise ValueError(f"train.max_skipped_batches must be >= 0, got {max_skipped}")
        if max_consecutive < 1:
            raise ValueError(f"train.max_consecutive_skipped must be >= 1, got {max_consecutive}")
        self.policy = policy
        self.max_skipped = max_skipped
        self.max_consecutive = max_consecutive
        self.last_checkpoint = last_checkpoint
        self.skipped = 0
        self.consecutive = 0  # skipped batches since the last accepted one

    def check(self, loss: float | torch.Tensor, step: int) -> bool:
        # A tensor costs one host sync; callers that already hold the float pass it instead.
        value = float(loss.detach().float().cpu()) if isinstance(loss, torch.Tensor) else float(loss)
        if math.isfinite(value):
            self.consecutive = 0
            return False
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"non-finite loss ({value}) at step {step}; training stopped (train.nonfinite=stop). "
                f"{self._where()} Consider a lower optim.lr, optim.grad_clip, or train.nonfinite=skip."
            )
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"non-finite loss ({value}) at step {step}: {self.consecutive} batches in a row skipped "
                f"(steps {step - self.consecutive + 1}-{step}; train.max_consecutive_skipped={self.max_consecutive}): "
                f"the weights are not recovering; training stopped. {self._where()}"
            )
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

    def check_weights(self, models: Mapping[str, nn.Module], step: int) -> None:
        """Raise (naming `step` and the model) when any weight of `models` is NaN/inf, before the
        checkpoint of `step` is written. A collective: every rank calls it at the same step."""
        from wmtp.parallel.reduce import global_sum

        names = list(models)
        counts = torch.stack([_nonfinite_count(models[n]) for n in names]) if names else torch.zeros(0)
        counts = global_sum(counts)
        bad = [f"{n} ({int(c)} values)" for n, c in zip(names, counts.tolist()) if c]
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights at step {step} in {', '.join(bad)}: checkpoint of step {step} not written; "
                f"training stopped (train.nonfinite={self.policy}). {self._where()} "
                "Consider a lower optim.lr or optim.grad_clip."
            )

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped = int(state["skipped"])
        self.consecutive = int(state.get("consecutive", 0))  # checkpoints before the count existed


def _nonfinite_count(model: nn.Module) -> torch.Tensor:
    """NaN/inf values among this rank's parameters (its shards, under FSDP). 0-dim float64."""
    total = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += (~torch.isfinite(local.detach())).sum().double().cpu()
    return total

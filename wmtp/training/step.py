"""One optimizer step's parts: a model with its optimizer and LR schedule (`Trainable`), the
step itself (replicated-gradient sum, clipping, the non-finite guard), and the loss's global
denominators and head coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from torch import Tensor, nn

from wmtp.config.schema import WMTPConfig
from wmtp.losses.alignment import count_valid_targets
from wmtp.parallel.build import sync_gradients
from wmtp.parallel.reduce import DistEnv, global_sum
from wmtp.training.optim import build_optimizer
from wmtp.training.schedule import build_scheduler

if TYPE_CHECKING:
    from wmtp.model.transformer import Transformer
    from wmtp.model.value import ValueModel


M = TypeVar("M", bound=nn.Module)


@dataclass
class Trainable(Generic[M]):
    """A model with its optimiser and LR schedule."""

    model: M
    optimizer: torch.optim.Optimizer
    scheduler: Any


def build_trainable(model: M, cfg: WMTPConfig, lr: float, layout: DistEnv) -> Trainable[M]:
    opt = build_optimizer(model, lr=lr, weight_decay=cfg.optim.weight_decay, betas=(cfg.optim.betas[0], cfg.optim.betas[1]),
                          fused=layout.gpu_policies)
    sched = build_scheduler(opt, warmup_steps=cfg.optim.warmup_steps, total_steps=cfg.train.steps,
                            min_lr_ratio=cfg.optim.min_lr_ratio)
    return Trainable(model, opt, sched)


def optimizer_step(parts: list[Trainable], loss: Tensor, cfg: WMTPConfig, layout: DistEnv, guard,
                   step: int) -> list[Tensor] | None:
    """Sum replicated gradients, clip each model's global norm, then step — unless the loss or a
    norm is non-finite on any rank, where the guard stops the run or skips the batch (None).

    One host sync per step: the guard's look at the (globally summed) loss and norms.
    """
    norms = []
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")
    for part in parts:
        sync_gradients(part.model, layout)
        params = [p for p in part.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        # FSDP2 parameters are DTensors: their norm is a replicated DTensor; keep a plain tensor.
        norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    check = global_sum(torch.stack([loss.detach().double(), *[n.detach().double() for n in norms]]), layout)
    skip = guard.check(float(check.sum()), step)
    for part in parts:
        if not skip:
            part.optimizer.step()
            part.scheduler.step()
        part.optimizer.zero_grad(set_to_none=True)
    return None if skip else norms


def step_denominators(labels: list[Tensor], n_heads: int, layout: DistEnv) -> Tensor:
    """`N_k` of the whole optimizer step: every micro-batch of every rank. `[H]` long."""
    local = torch.stack([count_valid_targets(lb, n_heads) for lb in labels]).sum(0)
    return global_sum(local, layout)


def n_heads_of(model: Transformer | ValueModel) -> int:
    return model.args.n_future_tokens


def head_coefficients(cfg: WMTPConfig, n_heads: int) -> list[float] | None:
    coefs = cfg.model.head_coefficients
    if coefs is not None and len(coefs) != n_heads:
        raise ValueError(f"model.head_coefficients has {len(coefs)} entries but the model has {n_heads} heads")
    return coefs

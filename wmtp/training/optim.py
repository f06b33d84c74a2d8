"""AdamW with decoupled weight decay on matrices only.

Decay groups: every trainable parameter with ndim >= 2 (attention/FFN matrices, the token
embedding and the shared output projection) decays; 1-D parameters (RMSNorm gains, biases, the
value head's scalar bias) do not — shrinking a norm's gain toward 0 or a bias toward 0 is not
regularisation, it just fights the model. The embedding decays as in LLaMA/GPT practice.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: `ndim >= 2` parameters with `weight_decay`, the rest with 0.

    Frozen parameters (requires_grad=False) are left out.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _on_cuda(params: Iterable[torch.Tensor]) -> bool:
    params = list(params)
    return bool(params) and all(p.device.type == "cuda" for p in params)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, weight_decay)`.

    Fused kernel when every parameter is on CUDA (one launch per step instead of one per tensor)
    or `fused` (the memory trace of a GPU run, `DistEnv.gpu_policies`); the multi-tensor `foreach`
    path elsewhere. Parameters keep their dtype (fp32 master weights).
    """
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    all_params = [p for g in groups for p in g["params"]]
    if _on_cuda(all_params) or fused:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)

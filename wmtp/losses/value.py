"""The critic, the losses layer; the same concept as wmtp.model.value: its losses.

Critic losses (docs/MATH.md). Pure tensors; every mean is a masked mean whose denominator may
be given explicitly (the global count of the optimizer step) so the loss does not change with
world size or gradient accumulation. By name (`critic.loss`): `get_value_loss`.

Indexing: pass values already aligned with their targets. For GAE/TD(λ) targets `G_j`, which live
on response token j and belong to the state before it, pass
`wmtp.losses.alignment.state_values(values)` with `response_mask` (that is V_{j−1} at j).
Sign convention: values estimate P(correct), higher = better; advantages are `G − V`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, denominator: float | Tensor | None = None) -> Tensor:
    """`Σ x·mask / denominator` (default: local `Σ mask`, at least 1). x, mask: same shape."""
    m = mask.to(x.dtype)
    denom = m.sum() if denominator is None else torch.as_tensor(denominator, dtype=x.dtype, device=x.device)
    return (x * m).sum() / denom.clamp_min(1.0)


@dataclass
class ValueLoss:
    """loss: scalar with grad; clip_fraction, explained_variance: detached 0-dim tensors."""

    loss: Tensor
    clip_fraction: Tensor
    explained_variance: Tensor


def explained_variance_moments(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """float64 `[5]` sums over the mask: (Σt, Σt², Σr, Σr², N) with t = target, r = target − pred.
    Moments add across micro-batches and ranks, so `explained_variance_from_moments` of their sum
    is the explained variance of the whole global batch."""
    m = mask.to(torch.float64)
    t, r = target.detach().double() * m, (target - pred).detach().double() * m
    return torch.stack([t.sum(), (t * t).sum(), r.sum(), (r * r).sum(), m.sum()])


def explained_variance_from_moments(moments: Tensor) -> Tensor:
    """`1 − Var(r) / Var(t)` from `explained_variance_moments` (NaN if N = 0 or Var(t) = 0)."""
    st, stt, sr, srr, n = moments.double().unbind()
    nn_ = n.clamp_min(1.0)
    var_t = (stt / nn_ - (st / nn_) ** 2).clamp_min(0.0)
    var_r = (srr / nn_ - (sr / nn_) ** 2).clamp_min(0.0)
    nan = torch.full_like(var_t, float("nan"))
    return torch.where((n > 0) & (var_t > 1e-300), 1.0 - var_r / var_t.clamp_min(1e-300), nan)


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """`1 − Var(target − pred) / Var(target)` over the mask (SB3's definition; NaN if Var(target)=0).

    Masked moments on the inputs' device: no compaction, no host sync."""
    m = mask.to(torch.float64)
    n = m.sum()
    t, r = target.detach().double(), (target - pred).detach().double()

    def var(x: Tensor) -> Tensor:
        mean = (x * m).sum() / n.clamp_min(1.0)
        return (((x - mean) ** 2) * m).sum() / n.clamp_min(1.0)

    var_t = var(t)
    nan = torch.full_like(var_t, float("nan"))
    return torch.where((n > 0) & (var_t > 0), 1.0 - var(r) / var_t.clamp_min(1e-300), nan)


def clipped_value_loss(v_new: Tensor, v_old: Tensor, returns: Tensor, mask: Tensor, coef: float = 0.5,
                       clip_range: float = 0.2, denominator: float | Tensor | None = None) -> ValueLoss:
    """PPO/SB3 clipped value loss, `[B, S]` inputs:
    `coef · mean(max((V_new − G)², (V_old + clip(V_new − V_old, −ε, ε) − G)²))`.
    clip_fraction: share of valid entries with |V_new − V_old| > ε; explained variance of G by
    V_old (the rollout values, as SB3 reports it)."""
    v_old, returns = v_old.detach(), returns.detach()
    clipped = v_old + (v_new - v_old).clamp(-clip_range, clip_range)
    per = torch.maximum((v_new - returns) ** 2, (clipped - returns) ** 2)
    loss = coef * masked_mean(per, mask, denominator)
    frac = masked_mean(((v_new.detach() - v_old).abs() > clip_range).double(), mask)
    return ValueLoss(loss, frac, explained_variance(v_old, returns, mask))


def mc_mse_loss(values: Tensor, mask: Tensor, rewards: Tensor,
                denominator: float | Tensor | None = None) -> Tensor:
    """Monte-Carlo MSE: every masked state value → the sample's outcome R. values/mask `[B, S]`,
    rewards `[B]`."""
    return masked_mean((values - rewards.to(values.dtype)[:, None]) ** 2, mask, denominator)


def lambda_return_loss(values: Tensor, returns: Tensor, mask: Tensor,
                       denominator: float | Tensor | None = None) -> Tensor:
    """MSE to detached TD(λ) targets (`wmtp.weighting.gae.lambda_returns`). `[B, S]` inputs."""
    return masked_mean((values - returns.detach()) ** 2, mask, denominator)


def mean_response_value(values: Tensor, mask: Tensor) -> Tensor:
    """`[B, S]` → `[B]`: the mean of each row's masked values."""
    m = mask.to(values.dtype)
    return (values * m).sum(1) / m.sum(1).clamp_min(1.0)


def pairwise_loss(values_pos: Tensor, mask_pos: Tensor, values_neg: Tensor, mask_neg: Tensor,
                  denominator: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Bradley–Terry on mean response values of paired (correct, incorrect) solutions:
    `mean_b −log σ(v̄⁺_b − v̄⁻_b)`. Inputs `[P, S]` (row b of pos and neg are one pair; the two may
    have different S). Returns (loss, pairwise accuracy = share with v̄⁺ > v̄⁻, detached)."""
    if values_pos.shape[0] != values_neg.shape[0]:
        raise ValueError(f"pairwise_loss needs as many positives as negatives, got {values_pos.shape[0]} "
                         f"and {values_neg.shape[0]}")
    margin = mean_response_value(values_pos, mask_pos) - mean_response_value(values_neg, mask_neg)
    ones = torch.ones_like(margin)
    loss = masked_mean(F.softplus(-margin), ones, denominator)
    return loss, (margin.detach() > 0).double().mean()


# ---------------------------------------------------------------- by name (`critic.loss`)

ValueLossFn = Callable[..., Any]  # signatures and results differ by objective (`get_value_loss`)
VALUE_LOSSES: dict[str, ValueLossFn] = {}


def register_value_loss(name: str) -> Callable[[ValueLossFn], ValueLossFn]:
    """Decorator/registrar; a duplicate name is an error."""

    def deco(fn: ValueLossFn) -> ValueLossFn:
        if name in VALUE_LOSSES:
            raise ValueError(f"value loss {name!r} is already registered")
        VALUE_LOSSES[name] = fn
        return fn

    return deco


def get_value_loss(name: str) -> ValueLossFn:
    """The value loss `critic.loss` names. Signatures differ by objective: `clipped(v_new, v_old,
    returns, mask, coef, clip_range)`, `mc_mse(values, mask, rewards)`, `lambda_return(values,
    returns, mask)`, `pairwise(values_pos, mask_pos, values_neg, mask_neg)`; each also takes
    `denominator=`."""
    if name not in VALUE_LOSSES:
        raise ValueError(f"unknown value loss {name!r}; allowed: {sorted(VALUE_LOSSES)}")
    return VALUE_LOSSES[name]


register_value_loss("clipped")(clipped_value_loss)
register_value_loss("mc_mse")(mc_mse_loss)
register_value_loss("lambda_return")(lambda_return_loss)
register_value_loss("pairwise")(pairwise_loss)

"""Weighting schemes by name: a recipe calls `get_weighting_scheme(name)(**inputs)`.

Every scheme returns a `WeightingResult` whose `weights` go straight to
`mtp_cross_entropy(weights=...)`: None (≡1), `[B, S]` target-indexed, or `[B, S, H]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from wmtp.weighting.gae import compute_gae
from wmtp.weighting.normalize import Normalizer, ReduceFn
from wmtp.weighting.rho1 import GatherFn, rho1_weights
from wmtp.weighting.weights import advantage_weights


@dataclass
class WeightingResult:
    """weights: None | `[B, S]` | `[B, S, H]` (detached); metrics: floats/0-dim tensors to log;
    extras: tensors other phases need (advantages, returns)."""

    weights: Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)


WeightingScheme = Callable[..., WeightingResult]
WEIGHTING_SCHEMES: dict[str, WeightingScheme] = {}


def register_weighting_scheme(*names: str) -> Callable[[WeightingScheme], WeightingScheme]:
    """Decorator: register a scheme under one or more names (duplicates are errors)."""

    def deco(fn: WeightingScheme) -> WeightingScheme:
        for n in names:
            if n in WEIGHTING_SCHEMES:
                raise ValueError(f"weighting scheme {n!r} is already registered")
            WEIGHTING_SCHEMES[n] = fn
        return fn

    return deco


def get_weighting_scheme(name: str) -> WeightingScheme:
    if name not in WEIGHTING_SCHEMES:
        raise ValueError(f"unknown weighting scheme {name!r}; allowed: {sorted(WEIGHTING_SCHEMES)}")
    return WEIGHTING_SCHEMES[name]


@register_weighting_scheme("uniform", "baseline")
def uniform_weights(**_: object) -> WeightingResult:
    """W ≡ 1 (baseline, ref_tuning)."""
    return WeightingResult(weights=None)


@register_weighting_scheme("verifiable")
def verifiable_weights(*, values: Tensor, response_mask: Tensor, rewards: Tensor, gamma: float = 0.99,
                       lam: float = 0.95, reward_mode: str = "outcome", normalizer: Normalizer | None = None,
                       temperature: float = 1.0, clip_min: float = 0.1, clip_max: float = 5.0,
                       renormalize: bool = True, update: bool = True, reduce_fn: ReduceFn | None = None,
                       **_: object) -> WeightingResult:
    """Critic values `[B, S]` → GAE → target-indexed weights `[B, S]` (`W_k(t) = w_{t+k}`).
    extras: advantages, returns (value targets for the clipped value loss)."""
    adv, ret = compute_gae(values, response_mask, rewards, gamma, lam, reward_mode)
    w, stats = advantage_weights(adv, response_mask, temperature, clip_min, clip_max, renormalize,
                                 normalizer, update=update, reduce_fn=reduce_fn)
    return WeightingResult(weights=w, metrics=stats.to_dict(), extras={"advantages": adv, "returns": ret})


@register_weighting_scheme("rho1")
def rho1_scheme(*, policy_losses: Tensor, ref_losses: Tensor, labels: Tensor, mode: str = "topk",
                ratio: float = 0.6, keep_first_head: bool = False, temperature: float = 1.0,
                clip_min: float = 0.1, clip_max: float = 5.0, attention_mask: Tensor | None = None,
                gather_fn: GatherFn | None = None, reduce_fn: ReduceFn | None = None,
                **_: object) -> WeightingResult:
    """Excess loss vs the reference → per-(position, head) weights `[B, S, H]`."""
    w, stats = rho1_weights(policy_losses, ref_losses, labels, mode=mode, ratio=ratio,
                            keep_first_head=keep_first_head, temperature=temperature, clip_min=clip_min,
                            clip_max=clip_max, attention_mask=attention_mask, gather_fn=gather_fn,
                            reduce_fn=reduce_fn)
    return WeightingResult(weights=w, metrics=stats.to_dict())

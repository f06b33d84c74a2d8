"""Value (critic) losses by name: `get_value_loss(name)`.

Signatures differ by objective (see `wmtp.losses.value`): `clipped(v_new, v_old, returns, mask,
coef, clip_range)`, `mc_mse(values, mask, rewards)`, `lambda_return(values, returns, mask)`,
`pairwise(values_pos, mask_pos, values_neg, mask_neg)`; each also takes `denominator=`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wmtp.losses.value import clipped_value_loss, lambda_return_loss, mc_mse_loss, pairwise_loss

ValueLossFn = Callable[..., Any]  # signatures and results differ by objective (module docstring)
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
    if name not in VALUE_LOSSES:
        raise ValueError(f"unknown value loss {name!r}; allowed: {sorted(VALUE_LOSSES)}")
    return VALUE_LOSSES[name]


register_value_loss("clipped")(clipped_value_loss)
register_value_loss("mc_mse")(mc_mse_loss)
register_value_loss("lambda_return")(lambda_return_loss)
register_value_loss("pairwise")(pairwise_loss)

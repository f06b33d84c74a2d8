"""Model hyper-parameters in Meta's `params.json` vocabulary, and named presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelArgs:
    """Shapes of a LLaMA-MTP model; field names match Meta's `params.json`.

    `n_layers` counts every transformer block, the extra MTP heads included (Meta's
    compute-matched layout): the trunk has `n_layers - n_future_tokens + 1` blocks, the last of
    which is head 1, and `extra_heads` holds the other `n_future_tokens - 1` blocks.
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    n_future_tokens: int = 1
    max_seq_len: int = 2048

    def __post_init__(self) -> None:
        check_param_types({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.kv_heads}")
        if not 1 <= self.n_future_tokens <= self.n_layers:
            raise ValueError(f"n_future_tokens={self.n_future_tokens} must be in [1, n_layers={self.n_layers}]")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_trunk_layers(self) -> int:
        """Blocks in `layers` (the shared trunk plus head 1)."""
        return self.n_layers - self.n_future_tokens + 1

    @property
    def ffn_hidden_dim(self) -> int:
        # Meta's rule: 2/3 of 4*dim, scaled, rounded up to a multiple of `multiple_of`.
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def to_params_json(self) -> dict[str, Any]:
        """The dict written as `params.json` (Meta's keys plus wmtp's `max_seq_len`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_params_json(cls, params: dict[str, Any]) -> ModelArgs:
        """Build from a `params.json` dict; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"params.json has unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(**params)

    def replace(self, **changes: Any) -> ModelArgs:
        return dataclasses.replace(self, **changes)


# The type of every params.json field: ints are never bools or floats, floats are finite numbers.
_INT_FIELDS = ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "n_future_tokens", "max_seq_len")
_OPTIONAL_INT_FIELDS = ("n_kv_heads",)
_POSITIVE_FLOAT_FIELDS = ("norm_eps", "rope_theta")
_OPTIONAL_POSITIVE_FLOAT_FIELDS = ("ffn_dim_multiplier",)


def check_param_types(params: dict[str, Any]) -> None:
    """Raise `ValueError` naming the first params.json field whose value has the wrong type
    (`dim: expected an integer, got '32'`); unknown keys are left to the caller."""
    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_positive_number(v: Any) -> bool:
        return (is_int(v) or isinstance(v, float)) and math.isfinite(v) and v > 0

    for key, value in params.items():
        if key in _INT_FIELDS or (key in _OPTIONAL_INT_FIELDS and value is not None):
            if not is_int(value):
                raise ValueError(f"{key}: expected an integer, got {value!r}")
            if value < 1 and not (key == "vocab_size" and value == -1):
                raise ValueError(f"{key}: expected an integer >= 1, got {value!r}")
        elif key in _POSITIVE_FLOAT_FIELDS or (key in _OPTIONAL_POSITIVE_FLOAT_FIELDS and value is not None):
            if not is_positive_number(value):
                raise ValueError(f"{key}: expected a finite number > 0, got {value!r}")


# Meta's released `7B_1T_4/params.json` (multi-token-prediction repo), plus a context length.
PRESETS: dict[str, ModelArgs] = {
    # ~2M parameters: trains on a 2-core CPU in minutes (docs/DATA.md sizing facts).
    "micro": ModelArgs(
        dim=192, n_layers=4, n_heads=6, n_kv_heads=2, vocab_size=1000, multiple_of=32,
        norm_eps=1e-5, rope_theta=10000.0, n_future_tokens=1, max_seq_len=256,
    ),
    # A tiny model for unit tests: fast, deterministic, exercises GQA and 4 heads.
    "tiny": ModelArgs(
        dim=32, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16,
        n_future_tokens=4, max_seq_len=64,
    ),
    "7b-mtp4": ModelArgs(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=None, vocab_size=32000, multiple_of=256,
        ffn_dim_multiplier=None, norm_eps=1e-5, rope_theta=10000.0, n_future_tokens=4, max_seq_len=4096,
    ),
    "7b-ntp": ModelArgs(
        dim=4096, n_layers=32, n_heads=32, vocab_size=32000, multiple_of=256, n_future_tokens=1,
        max_seq_len=4096,
    ),
    # ~1B parameters, 4 heads: the GPU check's model.
    "1b-mtp4": ModelArgs(
        dim=2048, n_layers=16, n_heads=16, n_kv_heads=8, vocab_size=32000, multiple_of=256,
        n_future_tokens=4, max_seq_len=2048,
    ),
}


def get_preset(name: str) -> ModelArgs:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; allowed: {sorted(PRESETS)}") from None


__all__ = ["ModelArgs", "PRESETS", "get_preset"]

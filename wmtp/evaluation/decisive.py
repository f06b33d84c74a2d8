"""Decisive tokens: the response tokens of a solution that overlap its `decisive_span`, the
characters where a synthetic incorrect solution differs from its closest correct variant
(docs/DATA.md). Used by the critic's quality report and the study's measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def char_offsets(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """`[n + 1]` character offsets of the pieces of `ids` in their decoded text (offset i = where
    piece i starts; the last = the text's length). The bundled tokenizer round-trips text exactly."""
    return [len(tokenizer.decode(list(ids[:i]))) for i in range(len(ids) + 1)]


def decisive_token_mask(tokenizer: Any, tokens: Tensor, response_start: Tensor, response_end: Tensor,
                        spans: Sequence[tuple[int, int] | None]) -> Tensor:
    """`[B, S]` bool, True at response tokens (label positions, EOS excluded) whose characters
    overlap the row's decisive span `[start, end)` of the solution text."""
    out = torch.zeros(tokens.shape, dtype=torch.bool)
    for b, span in enumerate(spans):
        if span is None:
            continue
        s, e = int(response_start[b]), int(response_end[b])  # e: EOS (or the cut token)
        ids = tokens[b, s:e].tolist()
        offs = char_offsets(tokenizer, ids)
        for i in range(len(ids)):
            if offs[i] < span[1] and offs[i + 1] > span[0]:
                out[b, s + i] = True
    return out

"""Decisive tokens: the response tokens of a solution that overlap its `decisive_span`, the
characters where a synthetic incorrect solution differs from its closest correct variant
(docs/DATA.md). Used by the critic's quality report, the Rho-1 recipe's weight diagnostics and the
study's measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wmtp.parallel import reduce
from wmtp.parallel.reduce import DistEnv
from wmtp.weighting.diagnostics import within_solution_auc


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


def strided_batches(data: Any, rows: np.ndarray, batch_size: int, layout: DistEnv) -> Iterator[tuple[list, Any, int]]:
    """This rank's strided share of `rows` of `data` (a `TrainingData`) as `(records, batch on the
    device, real)` chunks. Every rank yields the same number of chunks (a sharded model needs all
    ranks in each forward): a rank whose share ran out repeats a row, with `real` = 0."""
    mine = rows[layout.rank::layout.world_size]
    n_batches = math.ceil(math.ceil(len(rows) / layout.world_size) / batch_size) if len(rows) else 0
    for i in range(n_batches):
        chunk = mine[i * batch_size:(i + 1) * batch_size]
        real = len(chunk)
        if not real:
            chunk = rows[:1]
        records = data.records(chunk)
        yield records, data.collator(records, chunk.tolist()).to(layout.device), real


@torch.no_grad()
def decisive_weight_auc(data: Any, tokenizer: Any, weights: Callable[[Any], Tensor], *, batch_size: int,
                        layout: DistEnv) -> dict[str, float]:
    """`weights/decisive_auc`: over the incorrect solutions of `data` (a `TrainingData`) that carry
    a decisive span, the mean within-solution AUC of the token weights `weights(batch) -> [B, S]`
    (target-indexed) at the decisive tokens vs the solution's other response tokens (exact null 0.5;
    below 0.5: the bug gets less weight), and `weights/decisive_solutions`, how many it averaged;
    {} when `data` has no such solution. Each rank scores a strided share; one all-reduce pools them."""
    rows = np.flatnonzero(~data.index.is_correct)
    rows = np.array([r for r, rec in zip(rows, data.records(rows)) if rec.decisive_span is not None], dtype=np.int64)
    if not len(rows):
        return {}
    total = torch.zeros(2, dtype=torch.float64)  # (Σ AUC over solutions, solutions)
    for records, batch, real in strided_batches(data, rows, batch_size, layout):
        w = weights(batch).double().cpu()  # every rank calls it, also on a repeated row
        if not real:
            continue
        decisive = decisive_token_mask(tokenizer, batch.tokens.cpu(), batch.response_start.cpu(),
                                       batch.response_end.cpu(), [r.decisive_span for r in records])
        auc, used = within_solution_auc(w, decisive, (batch.labels != -100).cpu())
        if used:
            total += torch.tensor([auc * used, used], dtype=torch.float64)
    auc_sum, n = reduce.global_sum(total.to(layout.device), layout).tolist()
    return {"weights/decisive_auc": auc_sum / n if n else float("nan"), "weights/decisive_solutions": float(n)}

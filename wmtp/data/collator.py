"""Turn records into a padded training batch with response-only labels.

Layout of one sample: ``[BOS] prompt_tokens response_tokens [EOS]``. The prompt (Alpaca template)
and the response are encoded separately, so the label mask lines up with the token boundary
exactly. ``labels[b, j] = tokens[b, j]`` on response tokens and the EOS, ``-100`` elsewhere (BOS,
prompt, padding). Right padding to the longest sample in the batch.

Truncation at ``max_seq_len`` keeps the response start: the response is cut at its end (losing the
EOS when it does not fit), and the prompt is shortened from its *front* (after BOS, keeping the text
right before the response) only when it leaves less than ``min_response`` tokens for the response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from wmtp.data.records import Record
from wmtp.data.template import format_prompt

IGNORE_INDEX = -100


@dataclass
class Batch:
    """``tokens/labels/attention_mask: [B, S]``; ``is_correct, response_start, response_end, row: [B]``."""

    tokens: torch.Tensor  # [B, S] long
    labels: torch.Tensor  # [B, S] long, -100 = not a target
    attention_mask: torch.Tensor  # [B, S] bool, True = real token
    is_correct: torch.Tensor  # [B] bool
    response_start: torch.Tensor  # [B] long, first response position
    response_end: torch.Tensor  # [B] long, last response position (EOS included), inclusive
    problem_id: list[str]
    row: torch.Tensor  # [B] long, index row of each sample
    # [B] bool, True where max_seq_len cut the response before its EOS (its last token is no
    # terminal state: docs/MATH.md "Truncated responses"); None = not known (hand-built batches).
    truncated: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})  # type: ignore[arg-type]  # each field as it was, moved

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclass
class PairBatch:
    """(correct, incorrect) solutions of the same problems; ``chosen[i]`` pairs with ``rejected[i]``."""

    chosen: Batch
    rejected: Batch

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(self.chosen.to(device), self.rejected.to(device))


class Collator:
    """``collate(records, rows) -> Batch`` under a tokenizer and ``max_seq_len``."""

    def __init__(self, tokenizer: Any, max_seq_len: int, min_response: int | None = None):
        if max_seq_len < 4:
            raise ValueError(f"max_seq_len must be >= 4, got {max_seq_len}")
        self.tok = tokenizer
        self.max_seq_len = max_seq_len
        self.min_response = min_response if min_response is not None else max_seq_len // 4

    def encode(self, rec: Record) -> tuple[list[int], int]:
        """Token ids ``[BOS] prompt response [EOS]`` (truncated) and the response start position
        (a cut response does not end with EOS: ``ids[-1] != eos_id``)."""
        prompt = self.tok.encode(format_prompt(rec.instruction, rec.input))
        response = self.tok.encode(rec.output) + [self.tok.eos_id]
        room = self.max_seq_len - 1  # after BOS
        if len(prompt) + len(response) > room:
            keep_prompt = max(0, min(len(prompt), room - len(response)), min(len(prompt), room - self.min_response))
            prompt = prompt[len(prompt) - keep_prompt:]
            response = response[:room - len(prompt)]
        return [self.tok.bos_id, *prompt, *response], 1 + len(prompt)

    def __call__(self, records: Sequence[Record], rows: Sequence[int] | None = None) -> Batch:
        enc = [self.encode(r) for r in records]
        b, s = len(enc), max(len(ids) for ids, _ in enc)
        tokens = torch.full((b, s), self.tok.pad_id, dtype=torch.long)
        labels = torch.full((b, s), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((b, s), dtype=torch.bool)
        start = torch.empty(b, dtype=torch.long)
        end = torch.empty(b, dtype=torch.long)
        for i, (ids, rs) in enumerate(enc):
            t = torch.tensor(ids, dtype=torch.long)
            tokens[i, :len(ids)] = t
            labels[i, rs:len(ids)] = t[rs:]
            mask[i, :len(ids)] = True
            start[i], end[i] = rs, len(ids) - 1
        return Batch(
            tokens=tokens, labels=labels, attention_mask=mask,
            is_correct=torch.tensor([r.is_correct for r in records], dtype=torch.bool),
            response_start=start, response_end=end, problem_id=[r.problem_id for r in records],
            row=torch.tensor(list(rows) if rows is not None else [-1] * b, dtype=torch.long),
            truncated=torch.tensor([ids[-1] != self.tok.eos_id for ids, _ in enc], dtype=torch.bool),
        )

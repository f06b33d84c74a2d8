"""``TrainingData``: a JSONL file + its metadata index + tokenizer + collator, for the recipes.

Usage::

    data = TrainingData(jsonl, tokenizer=tok, max_seq_len=128)   # builds/reuses the index
    sampler = data.sampler("random", samples="correct", seed=0, rank=r, world_size=w)
    for batch in data.batches(sampler, batch_size=16):  # endless; stop by steps
        ...
    sampler.state_dict()  # checkpoint it; load_state_dict resumes with the exact next batch
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wmtp.data.collator import Batch, Collator, PairBatch
from wmtp.data.index import MetadataIndex, ensure_index, read_records, require_records
from wmtp.data.records import Record
from wmtp.data.samplers import Sampler, build_sampler


class TrainingData:
    """Records read by offset through the index; ``batches``/``pair_batches`` feed a sampler's order."""

    def __init__(self, jsonl_path: str | Path, index_path: str | Path | None = None, tokenizer: Any = None,
                 max_seq_len: int = 128, *, on_bad_line: str = "error", progress: bool = False):
        self.path = Path(jsonl_path)
        self.tokenizer = tokenizer
        self.build = ensure_index(self.path, index_path, tokenizer, on_bad_line=on_bad_line, progress=progress)
        require_records(self.path, self.build)
        self.index = MetadataIndex.load(self.build.path, source=self.path)
        self.collator = Collator(tokenizer, max_seq_len) if tokenizer is not None else None

    def __len__(self) -> int:
        return len(self.index)

    def records(self, rows: Sequence[int] | np.ndarray) -> list[Record]:
        """Records of index ``rows`` (read by byte offset, in the given order)."""
        rows = np.asarray(rows, dtype=np.int64)
        return read_records(self.path, self.index.offset[rows], self.index.length[rows])

    def collate(self, rows: Sequence[int] | np.ndarray) -> Batch:
        if self.collator is None:
            raise ValueError("TrainingData needs a tokenizer to collate batches")
        rows = np.asarray(rows, dtype=np.int64)
        return self.collator(self.records(rows), rows.tolist())

    def sampler(self, name: str = "random", **kwargs: Any) -> Sampler:
        return build_sampler(name, self.index, **kwargs)

    def batches(self, sampler: Sampler, batch_size: int) -> Iterator[Batch]:
        """Endless batches of ``batch_size`` rows in the sampler's order (crossing epochs)."""
        while True:
            yield self.collate(sampler.next(batch_size))

    def pair_batches(self, sampler: Sampler, batch_size: int) -> Iterator[PairBatch]:
        """Endless ``PairBatch``es of ``batch_size`` (correct, incorrect) pairs from a pairwise sampler."""
        while True:
            pairs = sampler.next(batch_size)
            if pairs.ndim != 2:
                raise ValueError(f"pair_batches needs a pairwise sampler, got {sampler.name!r}")
            yield PairBatch(self.collate(pairs[:, 0]), self.collate(pairs[:, 1]))

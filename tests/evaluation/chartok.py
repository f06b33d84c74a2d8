"""A character tokenizer with the `wmtp.model.tokenizer.Tokenizer` interface (tests only)."""

from __future__ import annotations

from collections.abc import Sequence

CHARS = "\n" + "".join(chr(c) for c in range(32, 127))


class CharTokenizer:
    """ids: 0 pad, 1 bos, 2 eos, then one id per character of CHARS (vocab 99)."""

    pad_id, bos_id, eos_id = 0, 1, 2
    vocab_size = 3 + len(CHARS)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [3 + CHARS.index(c) for c in text if c in CHARS]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(CHARS[i - 3] for i in ids if 3 <= i < self.vocab_size)

"""SentencePiece tokenizer: one wrapper for wmtp's own models and Meta's ``tokenizer.model``.

Special ids: wmtp-trained models use ``unk=0, bos=1, eos=2, pad=3``. Meta's LLaMA tokenizer has no
pad piece (``pad_id() == -1``); there ``pad_id`` maps to ``unk`` (0), which is never a real target:
padding is identified by ``attention_mask`` and masked by ``labels = -100``, so the id only has to be
a valid embedding row.

``train_tokenizer`` trains reproducibly (``num_threads=1``, input order fixed) with no whitespace
normalisation and no dummy prefix, and with explicit pieces for the newline and 4/8-space indents,
so code round-trips exactly and a prompt and a body encoded separately concatenate to the tokens of
neither more nor less than the two texts.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from wmtp.errors import WMTPUserError

# SentencePiece escapes spaces to U+2581 before matching user-defined symbols.
_SP = "\u2581"
CODE_SYMBOLS = ("\n", _SP * 4, _SP * 8)


class TokenizerError(WMTPUserError, ValueError):
    """A tokenizer.model that is not one (empty, text, garbage): named, exit 2."""


class Tokenizer:
    """``encode(text, bos, eos) -> list[int]``, ``decode(ids) -> str`` over a SentencePiece model."""

    def __init__(self, model_path: str | Path):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: tokenizer model not found")
        if self.path.stat().st_size == 0:
            raise TokenizerError(f"{self.path}: tokenizer model is empty (0 bytes); expected a SentencePiece "
                                 "tokenizer.model (model.tokenizer)")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:  # "Internal: ... ParseFromArray" for text and garbage
            raise TokenizerError(f"{self.path}: not a SentencePiece tokenizer.model ({str(e).strip()}); "
                                 "model.tokenizer must name the file written by SentencePiece training") from None
        if self.sp.vocab_size() <= 0:
            raise TokenizerError(f"{self.path}: tokenizer model has no pieces")
        self.vocab_size: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        pad = self.sp.pad_id()
        # Meta's model has pad = -1: use unk (0), a valid embedding row never used as a target.
        self.pad_id: int = pad if pad >= 0 else max(self.sp.unk_id(), 0)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids: list[int] = self.sp.encode(text)
        if bos:
            ids = [self.bos_id, *ids]
        if eos:
            ids = [*ids, self.eos_id]
        return ids

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        out: list[list[int]] = self.sp.encode(list(texts))
        if bos or eos:
            out = [([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else []) for ids in out]
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Decode, dropping special ids (bos/eos/pad and anything negative)."""
        special = {self.bos_id, self.eos_id, self.pad_id}
        text: str = self.sp.decode([int(i) for i in ids if int(i) >= 0 and int(i) not in special])
        return text

    def decode_batch(self, batch: Iterable[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def fingerprint(self) -> str:
        """sha256 of the model file (cache keys of token counts)."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def train_tokenizer(corpus_lines: Iterable[str], out_path: str | Path, vocab_size: int = 1000,
                    seed: int = 0, model_type: str = "bpe", split_by_whitespace: bool = False,
                    max_piece_length: int = 64) -> Tokenizer:
    """Train a SentencePiece model on ``corpus_lines`` (each a whole text, newlines allowed).

    Reproducible: one thread, the corpus order as given, and ``seed`` fixes the sentence
    sub-sampling (``input_sentence_size`` is capped and shuffled by SentencePiece only above it).
    ``split_by_whitespace=False`` lets pieces span words, so the fixed prompt template costs few
    tokens (the bundled task's samples then fit 128 tokens).
    """
    lines = [s for s in corpus_lines if s]
    if not lines:
        raise ValueError("train_tokenizer: empty corpus")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        user_defined_symbols=list(CODE_SYMBOLS), allow_whitespace_only_pieces=True,
        byte_fallback=True, split_digits=True, split_by_whitespace=split_by_whitespace, max_sentencepiece_length=max_piece_length, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=1, hard_vocab_limit=False,
        max_sentence_length=1 << 16, input_sentence_size=2_000_000, shuffle_input_sentence=False,
        minloglevel=2,
    )
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)
    return Tokenizer(out)

"""The SentencePiece wrapper: exact round trips, reproducible training, separate prompt/body encoding."""

from __future__ import annotations

import io

import sentencepiece as spm

from wmtp.data.template import format_prompt
from wmtp.model.tokenizer import Tokenizer, train_tokenizer

TEXTS = [
    "def f(xs):\n    out = []\n    for v in xs:\n        out.append(v + 3)\n    return out\n",
    "  leading spaces\tand tabs\n\n\nthree newlines",
    "unicode é ü 中文 🙂 and bytes",
    "",
]


def test_round_trip_exact(small_tokenizer):
    for t in TEXTS:
        assert small_tokenizer.decode(small_tokenizer.encode(t)) == t
    assert small_tokenizer.decode_batch(small_tokenizer.encode_batch(TEXTS)) == TEXTS


def test_special_ids(small_tokenizer):
    tok = small_tokenizer
    assert (tok.sp.unk_id(), tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    ids = tok.encode("x = 1", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.decode(ids) == "x = 1"
    assert tok.encode_batch(["a", "b"], bos=True)[1][0] == tok.bos_id
    assert 300 <= tok.vocab_size <= 1000


def test_newline_and_indent_pieces(small_tokenizer):
    pieces = [small_tokenizer.sp.id_to_piece(i) for i in small_tokenizer.encode("x\n    y\n        z")]
    assert "\n" in pieces and "\u2581" * 4 in pieces and "\u2581" * 8 in pieces


def test_prompt_and_body_encoded_separately_concatenate(small_tokenizer, synth60):
    tok = small_tokenizer
    for p in synth60.problems[:10]:
        prompt = format_prompt(p.instruction, p.input)
        body = p.candidates[0]
        ids = tok.encode(prompt) + tok.encode(body)
        assert tok.decode(ids) == prompt + body


def test_training_is_reproducible(tmp_path, synth60):
    corpus = [format_prompt(p.instruction, p.input) + p.candidates[0] for p in synth60.problems]
    a = train_tokenizer(corpus, tmp_path / "a.model", vocab_size=400, seed=0)
    b = train_tokenizer(corpus, tmp_path / "b.model", vocab_size=400, seed=0)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert a.fingerprint() == b.fingerprint()


def test_meta_style_model_without_pad(tmp_path):
    # Meta's tokenizer.model has pad_id = -1: the wrapper maps pad to unk (0).
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS[:3] * 20), model_writer=buf, vocab_size=300,
                                   byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    tok = Tokenizer(tmp_path / "tokenizer.model")
    assert tok.sp.pad_id() == -1 and tok.pad_id == 0
    assert tok.decode(tok.encode("hello world", bos=True, eos=True) + [tok.pad_id]) == "hello world"

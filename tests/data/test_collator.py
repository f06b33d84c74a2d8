"""The collator: BOS once, response-only labels aligned with the response, right padding, truncation."""

from __future__ import annotations

import torch

from wmtp.data.collator import IGNORE_INDEX, Collator
from wmtp.data.dataset import TrainingData
from wmtp.data.records import Record
from wmtp.data.template import format_prompt


def test_labels_cover_exactly_response_and_eos(small_bundle, small_tokenizer):
    tok = small_tokenizer
    data = TrainingData(small_bundle.train, small_bundle.train_index, tok, max_seq_len=512)
    rows = [0, 3, 8, 1]
    batch = data.collate(rows)
    recs = data.records(rows)
    lengths = batch.attention_mask.sum(1)
    assert batch.tokens.shape == (4, int(lengths.max()))  # padded to the longest, not max_seq_len
    for i, r in enumerate(recs):
        n = int(lengths[i])
        assert batch.attention_mask[i, :n].all() and not batch.attention_mask[i, n:].any()
        assert (batch.tokens[i, n:] == tok.pad_id).all()
        assert batch.tokens[i, 0] == tok.bos_id and (batch.tokens[i, 1:n] != tok.bos_id).all()
        prompt = tok.encode(format_prompt(r.instruction, r.input))
        s, e = int(batch.response_start[i]), int(batch.response_end[i])
        assert s == 1 + len(prompt) and e == n - 1 and batch.tokens[i, e] == tok.eos_id
        lab = batch.labels[i]
        assert (lab[:s] == IGNORE_INDEX).all() and (lab[e + 1:] == IGNORE_INDEX).all()
        assert torch.equal(lab[s:e + 1], batch.tokens[i, s:e + 1])
        assert tok.decode(lab[s:e + 1].tolist()) == r.output  # the targets are exactly the solution
        assert tok.decode(batch.tokens[i, :s].tolist()) == format_prompt(r.instruction, r.input)
    assert batch.row.tolist() == rows
    assert batch.is_correct.tolist() == [r.is_correct for r in recs]
    assert batch.problem_id == [r.problem_id for r in recs]
    moved = batch.to("cpu")
    assert moved.tokens.dtype == torch.long and moved.problem_id == batch.problem_id


def test_truncation_keeps_response_start(small_tokenizer):
    tok = small_tokenizer
    long_prompt = Record("p", "word " * 200, "", "def f(x):\n    return x\n", True)
    col = Collator(tok, max_seq_len=48)
    b = col([long_prompt])
    assert b.tokens.shape[1] <= 48
    s, e = int(b.response_start[0]), int(b.response_end[0])
    resp = tok.encode(long_prompt.output) + [tok.eos_id]
    assert b.tokens[0, s:e + 1].tolist() == resp  # the whole response survives
    assert b.tokens[0, 0] == tok.bos_id
    # the prompt kept its end (right before the response)
    full_prompt = tok.encode(format_prompt(long_prompt.instruction, ""))
    assert b.tokens[0, 1:s].tolist() == full_prompt[len(full_prompt) - (s - 1):]

    long_resp = Record("p", "add", "", "x = 1\n" * 100, True)
    b = Collator(tok, max_seq_len=40, min_response=10)([long_resp])
    assert b.tokens.shape[1] == 40
    s = int(b.response_start[0])
    resp = tok.encode(long_resp.output)
    assert b.tokens[0, s:].tolist() == resp[: 40 - s]  # response start kept, tail (and EOS) cut
    assert 40 - s >= 10 and (b.labels[0, s:] != IGNORE_INDEX).all()


def test_truncated_responses_are_flagged(small_tokenizer):
    """A response cut before its EOS is flagged (no terminal reward at its last token: docs/MATH.md)."""
    whole = Record("p", "add", "", "x = 1\n", True)
    cut = Record("p", "add", "", "x = 1\n" * 100, True)
    b = Collator(small_tokenizer, max_seq_len=40)([whole, cut])
    assert b.truncated.tolist() == [False, True]
    assert b.tokens[0, int(b.response_end[0])] == small_tokenizer.eos_id
    assert b.tokens[1, int(b.response_end[1])] != small_tokenizer.eos_id
    assert b.to("cpu").truncated.tolist() == [False, True]


def test_pair_batches(small_bundle, small_tokenizer):
    data = TrainingData(small_bundle.train, small_bundle.train_index, small_tokenizer, max_seq_len=256)
    sampler = data.sampler("pairwise", seed=0)
    pb = next(data.pair_batches(sampler, 3))
    assert pb.chosen.is_correct.all() and not pb.rejected.is_correct.any()
    assert pb.chosen.problem_id == pb.rejected.problem_id


def test_batches_follow_sampler_and_resume(small_bundle, small_tokenizer):
    data = TrainingData(small_bundle.train, small_bundle.train_index, small_tokenizer, max_seq_len=128)
    s = data.sampler("random", samples="correct", seed=0)
    it = data.batches(s, 4)
    next(it)
    state = s.state_dict()
    want = next(it)
    s2 = data.sampler("random", samples="correct", seed=0)
    s2.load_state_dict(state)
    got = next(data.batches(s2, 4))
    assert torch.equal(got.tokens, want.tokens) and got.row.tolist() == want.row.tolist()
    assert got.is_correct.all()


def test_truncated_samples_are_counted(small_tokenizer):
    from wmtp.data.streams import truncated_samples
    from wmtp.parallel.reduce import DistEnv

    col = Collator(small_tokenizer, max_seq_len=40)
    batches = [col([Record("p", "add", "", "x = 1\n" * n, True) for n in (1, 100, 100)]),
               col([Record("p", "add", "", "x = 1\n" * n, True) for n in (100, 2)])]
    assert float(truncated_samples(batches, DistEnv.from_env("cpu"))) == 3.0

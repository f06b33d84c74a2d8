"""KV-cache generation: equal to the no-cache reference, sampling knobs, stops, EOS."""

from __future__ import annotations

import pytest
import torch

from tests.evaluation.chartok import CharTokenizer
from wmtp.evaluation.generation import (
    generate,
    generate_tokens,
    greedy_decode_no_cache,
    left_pad,
    sample_next_token,
    truncate_at_stop,
)
from wmtp.model.transformer import build_model

PROMPTS = [[1, 5, 7, 9, 11], [1, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]


def test_left_pad_layout():
    tokens, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert tokens.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]


def test_batched_kv_cache_greedy_equals_no_cache_reference(tiny_model):
    tiny_model.eval()
    cached = generate_tokens(tiny_model, PROMPTS, max_new_tokens=24)
    reference = [greedy_decode_no_cache(tiny_model, p, max_new_tokens=24) for p in PROMPTS]
    assert cached == reference
    # Batch composition does not change a sample (left padding is invisible).
    assert generate_tokens(tiny_model, PROMPTS[1:2], max_new_tokens=24) == reference[1:2]


def test_per_sample_eos_stops_only_that_sample(tiny_model):
    tiny_model.eval()
    free = generate_tokens(tiny_model, PROMPTS, max_new_tokens=12)
    eos = free[0][3]  # make sample 0's 4th token the EOS id
    out = generate_tokens(tiny_model, PROMPTS, max_new_tokens=12, eos_id=eos)
    assert out[0] == free[0][:4]
    for got, full in zip(out[1:], free[1:]):
        cut = full.index(eos) + 1 if eos in full else len(full)
        assert got == full[:cut]


def test_should_stop_and_max_new_tokens(tiny_model):
    out = generate_tokens(tiny_model, PROMPTS, max_new_tokens=7,
                          should_stop=lambda i, ids: i == 1 and len(ids) == 2)
    assert [len(o) for o in out] == [7, 2, 7]


def test_sampling_is_seeded_and_top_p_restricts_support():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    a = sample_next_token(logits, temperature=1.0, top_p=1.0, generator=g)
    b = sample_next_token(logits, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert set(a.tolist()) == {0, 1, 2, 3}
    # p(0)=0.70, p(1)=0.26: top_p=0.9 keeps exactly {0, 1}; top_p=0.5 keeps only the argmax.
    nucleus = sample_next_token(logits, temperature=1.0, top_p=0.9, generator=g)
    assert set(nucleus.tolist()) == {0, 1}
    frac0 = (nucleus == 0).float().mean().item()
    p = torch.softmax(logits[0], -1)
    assert abs(frac0 - (p[0] / (p[0] + p[1])).item()) < 0.03
    assert set(sample_next_token(logits, temperature=1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert sample_next_token(logits[:1], temperature=0.0).item() == 0
    with pytest.raises(ValueError):
        sample_next_token(logits, temperature=1.0, top_p=0.0)


def test_text_generate_stop_strings_and_eos(tiny_args):
    args = tiny_args.replace(vocab_size=CharTokenizer.vocab_size + 1)
    model = build_model(args, seed=3).eval()
    tok = CharTokenizer()
    prompts = ["def f(x):\n", "ab"]
    raw = generate(model, tok, prompts, max_new_tokens=20)
    ids = generate_tokens(model, [tok.encode(p, bos=True) for p in prompts], max_new_tokens=20,
                          eos_id=tok.eos_id)
    assert raw == [tok.decode(i) for i in ids]
    stop = raw[0][3:5]  # a stop string that occurs in sample 0
    cut = generate(model, tok, prompts, max_new_tokens=20, stop=[stop])
    assert cut[0] == truncate_at_stop(raw[0], [stop]) and stop not in cut[0]
    assert cut[1] == truncate_at_stop(raw[1], [stop])
    # Sampling with a seed is reproducible.
    s1 = generate(model, tok, prompts, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    assert s1 == generate(model, tok, prompts, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)


def test_truncate_at_stop_earliest():
    assert truncate_at_stop("a\ndef g\nclass X", ["\nclass", "\ndef"]) == "a"
    assert truncate_at_stop("abc", ["zz"]) == "abc"


def test_too_long_prompt_is_cut_from_the_left(tiny_model):
    long = list(range(1, 60))
    out = generate_tokens(tiny_model, [long], max_new_tokens=10)
    assert out == generate_tokens(tiny_model, [long[-54:]], max_new_tokens=10)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate_tokens(tiny_model, [long], max_new_tokens=64)

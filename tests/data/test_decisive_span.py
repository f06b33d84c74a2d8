"""The synthetic task marks where an incorrect solution differs from a correct one (decisive span)."""

from __future__ import annotations

import json

import pytest

from wmtp.data.records import parse_record
from wmtp.data.synth.generator import decisive_span, generate


def test_hand_spans():
    assert decisive_span("return x + 13\n", ["return x + 12\n"]) == (12, 13)
    assert decisive_span("return x - 12\n", ["return x + 12\n", "return 12 + x\n"]) == (9, 10)
    # pure deletion: the characters around the gap
    assert decisive_span("return xs[:]\n", ["return xs[:3]\n"]) == (10, 12)


@pytest.fixture(scope="module")
def dataset():
    return generate(80, 0, workers=1)


def test_every_incorrect_mutant_has_a_span_that_explains_the_difference(dataset):
    n = 0
    for p in dataset.problems:
        variants = p.candidates[:p.n_variants]
        for r in p.records():
            if r.output in variants:
                assert r.decisive_span is None
                continue
            a, b = r.decisive_span
            assert 0 <= a < b <= len(r.output)
            if not r.is_correct:
                n += 1
                # outside the span the mutant agrees with some correct variant's prefix and suffix
                assert any(v.startswith(r.output[:a]) and v.endswith(r.output[b:]) for v in variants), r.output
    assert n > 50


def test_span_round_trips_and_is_validated(dataset):
    rec = next(r for r in dataset.records("train") if r.decisive_span is not None)
    back = parse_record(json.loads(rec.to_json()))
    assert back == rec
    bad = json.loads(rec.to_json()) | {"decisive_span": [3, 10_000]}
    with pytest.raises(ValueError, match="decisive_span"):
        parse_record(bad)

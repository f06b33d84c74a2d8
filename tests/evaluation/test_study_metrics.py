"""The study's measures against hand numbers and obvious references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wmtp.evaluation.metrics import roc_auc
from wmtp.evaluation.study_metrics import (
    RunMeasures,
    aggregate,
    bootstrap_ci,
    decisive_token_mask,
    family_of,
    format_table,
    rank_auc,
    read_curves,
    time_to_threshold,
    weight_share,
)


def test_weight_share_hand_numbers():
    w = torch.tensor([[0.0, 1.0, 3.0, 1.0, 1.0, 2.0]])
    mask = torch.tensor([[False, True, True, True, True, True]])
    decisive = torch.tensor([[True, False, True, False, False, False]])  # position 0 is outside the mask
    share = weight_share(w, decisive, mask)
    assert share["mass_share"] == pytest.approx(3 / 8)
    assert share["token_share"] == pytest.approx(1 / 5)
    assert share["lift"] == pytest.approx((3 / 8) / (1 / 5))
    assert share["auc"] == 1.0  # 3 beats every other weight
    assert math.isnan(weight_share(w, torch.zeros_like(decisive), mask)["auc"])


def test_rank_auc_equals_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        s = torch.randint(0, 5, (40,), generator=g).double()  # many ties
        y = torch.rand(40, generator=g) > 0.6
        assert rank_auc(s, y) == pytest.approx(roc_auc(s, y), abs=1e-12)


def test_time_to_threshold_and_curves(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join([
        '{"params": {}}',
        '{"step": 10, "metrics": {"perf/targets_seen": 100, "train/loss": 3}}',
        '{"step": 10, "metrics": {"val/ce": 2.5}}',
        '{"step": 20, "metrics": {"perf/targets_seen": 200, "val/ce": 1.4, "eval/pass_at_1": 0.125}}',
        '{"step": 30, "metrics": {"perf/targets_seen": 300, "val/ce": 1.2, "eval/pass_at_1": 0.25}}',
    ]))
    curves = read_curves(log, ["val/ce", "eval/pass_at_1"])
    assert curves["val/ce"] == [(100.0, 2.5), (200.0, 1.4), (300.0, 1.2)]
    assert time_to_threshold(curves["val/ce"], 1.5, "min") == 200.0
    assert time_to_threshold(curves["eval/pass_at_1"], 0.25, "max") == 300.0
    assert time_to_threshold(curves["eval/pass_at_1"], 0.5, "max") is None


def test_bootstrap_ci_resamples_seeds_and_tasks():
    assert bootstrap_ci([[1.0]]) == (1.0, 1.0, 1.0)
    mean, lo, hi = bootstrap_ci([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]], seed=1)
    assert mean == pytest.approx(7 / 12) and lo < mean < hi and 0 <= lo and hi <= 1
    same = bootstrap_ci([[0.5], [0.5], [0.5]])
    assert same == (0.5, 0.5, 0.5)
    # agrees with a direct two-level resampling loop
    rows = [np.array([0.0, 1.0, 1.0]), np.array([1.0, 0.0, 0.0, 0.0]), np.array([1.0, 1.0])]
    rng = np.random.default_rng(3)
    ref = []
    for _ in range(1000):
        picked = [rows[j] for j in rng.integers(0, 3, 3)]
        ref.append(np.mean(np.concatenate([r[rng.integers(0, r.size, r.size)] for r in picked])))
    _, lo, hi = bootstrap_ci([list(r) for r in rows], seed=3)
    assert (lo, hi) == pytest.approx((np.quantile(ref, 0.025), np.quantile(ref, 0.975)))


def test_aggregate_and_table():
    runs = [RunMeasures("a", s, {"val/ce": 1.0 + s}, {"pass@1": [1.0, 0.0]}) for s in range(3)]
    runs.append(RunMeasures("b", 0, {"val/ce": float("nan")}, {"pass@1": [1.0]}))
    table = aggregate(runs, ["val/ce", "pass@1"], n_bootstrap=100)
    assert table["a"]["val/ce"][0] == 2.0 and table["a"]["val/ce"][3] == 3
    assert table["a"]["pass@1"][0] == 0.5
    assert table["b"]["val/ce"][3] == 0
    text = format_table(table, ["val/ce", "pass@1"], markdown=True)
    assert "| a | 2.000 [" in text and "—" in text


def test_family_of_task_ids():
    assert family_of("filter_scale_sum-0-00012") == "filter_scale_sum"
    assert family_of("HumanEval/12") == "HumanEval"


def test_decisive_mask_marks_the_tokens_of_the_span(tmp_path):
    from wmtp.data.collator import Collator
    from wmtp.data.records import Record
    from wmtp.model.tokenizer import Tokenizer, train_tokenizer

    corpus = ["def add_const(x):\n    return x + 12\n", "def add_const(x):\n    return x - 12\n"] * 20
    train_tokenizer(corpus, tmp_path / "t.model", vocab_size=300)
    tok = Tokenizer(tmp_path / "t.model")
    out = "def add_const(x):\n    return x - 12\n"
    start = out.index("-")
    rec = Record("p", "Write add_const.", "", out, False, 1, "add_const", (start, start + 1))
    batch = Collator(tok, 128)([rec])
    mask = decisive_token_mask(tok, batch.tokens, batch.response_start, batch.response_end, [rec.decisive_span])
    marked = batch.tokens[0][mask[0]].tolist()
    assert marked and "-" in tok.decode(marked)
    s, e = int(batch.response_start[0]), int(batch.response_end[0])
    assert mask[0, :s].sum() == 0 and not mask[0, e]  # never the prompt or the EOS
    assert len(tok.decode(marked)) < len(out) / 2

"""The study's measures against hand numbers and slow, obvious references."""

from __future__ import annotations

import json
import math

import torch

from tests.recipes.test_weight_controls import _batch, _Critic, _recipe
from wmtp.data.records import Record
from wmtp.evaluation.decisive import decisive_token_mask
from wmtp.study.measures import (
    RunMeasures,
    decisive_pairs,
    family_of,
    logged_weight_means,
    read_curves,
    run_token_weights,
    variant_span,
)


def test_variant_span_is_the_variants_side_of_the_edit():
    mutant, variant = "return x - 12\n", "return x + 12\n"
    assert variant_span(mutant, variant) == (9, 10) and variant[9] == "+"
    assert variant_span("return x\n", "return x + 1\n") == (8, 12)  # the variant has more
    assert variant_span("ab", "ab") == (0, 0)


def test_decisive_pairs_pick_the_closest_correct_variant_of_the_same_problem():
    recs = [Record("p1", "i", "", "return x + 1", True), Record("p1", "i", "", "return 1 + x", True),
            Record("p2", "i", "", "return x - 1", True),
            Record("p1", "i", "", "return x - 1", False, decisive_span=(9, 10)),
            Record("p3", "i", "", "return 0", False, decisive_span=(7, 8))]  # no correct variant: skipped
    mutants, spans, variants, vspans = decisive_pairs(recs, limit=10)
    assert [m.output for m in mutants] == ["return x - 1"] and spans == [(9, 10)]
    assert variants[0].output == "return x + 1" and vspans == [(9, 10)]


def test_study_weights_are_the_recipes_weights():
    """`run_token_weights` calls the function the recipe trains with: the same batch and critic give
    the recipe's first-step weights, for the critic, the shuffled and the position-only arm."""
    for source, shuffle in (("critic", False), ("critic", True), ("position", False)):
        r = _recipe(source)
        cfg = r.cfg.model_copy(deep=True)
        cfg.stage2.value_weighting.shuffle = shuffle
        r.cfg = cfg
        batch = _batch()
        from wmtp.recipes.experience import critic_experience

        vw = cfg.stage2.value_weighting
        scored = critic_experience(_Critic(3), batch, gamma=vw.gae_gamma, lam=vw.gae_lambda, reward_mode=vw.reward,
                                   version=0)
        (trained,), _ = r.step_weights([scored], [batch.labels], step=0)
        measured = run_token_weights(cfg, batch, policy=None, critic=_Critic(3))
        assert torch.allclose(trained, measured), (source, shuffle)
    assert run_token_weights(_recipe("uniform").cfg, _batch(), policy=None, critic=_Critic(3)) is None


def test_logged_weight_means_and_curves_against_trained_targets(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [{"step": 2, "metrics": {"train/weights/ess": 0.5, "train/weights/quarter_1": 0.2, "train/loss": 3.0}},
            {"step": 2, "metrics": {"val/ce": 2.5}},
            {"step": 4, "metrics": {"train/weights/ess": 0.7, "train/weights/quarter_1": float("nan")}},
            {"step": 4, "metrics": {"val/ce": 2.0}}, {"event": "not a step"}]
    log.write_text("\n".join(json.dumps(r) for r in rows))
    means = logged_weight_means(log)
    assert math.isclose(means["weights/ess"], 0.6) and means["weights/quarter_1"] == 0.2
    assert read_curves(log, ["val/ce"], [10, 25, 40, 61]) == {"val/ce": [(25.0, 2.5), (61.0, 2.0)]}


def test_run_measures_round_trip():
    m = RunMeasures("critic", 1, {"pass@1": 0.5}, {"pass@1": {"t-0-1": 1.0}}, {"val/ce": [(10.0, 2.0)]})
    assert RunMeasures.from_json(json.loads(json.dumps(m.to_json()))) == m


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


def test_validation_ce_equals_a_slow_per_solution_reference(tmp_path):
    """CE of head k on a correct solution = the mean over its targets of −log softmax(h_k W)[target
    k+1 ahead]; incorrect solutions are left out; the quarters pool targets by relative position."""
    from types import SimpleNamespace

    from wmtp.data.collator import Collator
    from wmtp.model.args import ModelArgs
    from wmtp.model.tokenizer import train_tokenizer
    from wmtp.model.transformer import build_model
    from wmtp.study.measures import validation_ce

    corpus = [f"def f(x):\n    return x + {i}\n" for i in range(40)]
    tok = train_tokenizer(corpus * 5, tmp_path / "t.model", vocab_size=320)
    model = build_model(ModelArgs(dim=32, n_layers=3, n_heads=2, vocab_size=tok.vocab_size, max_seq_len=64,
                                  multiple_of=16, n_future_tokens=2), seed=0).eval()
    recs = [Record("p", "Add.", "", corpus[i], i != 1) for i in range(4)]
    cfg = SimpleNamespace(data=SimpleNamespace(max_seq_len=64), train=SimpleNamespace(loss_chunk_size=1024))
    items, quarters = validation_ce(model, tok, recs, cfg, batch_size=2)
    assert sorted(items["ce_head1"]) == ["v0", "v2", "v3"] and set(items) == {"ce_head1", "ce_head2"}
    sums = {(k, q): [0.0, 0] for k in range(2) for q in range(4)}
    for i in (0, 2, 3):
        batch = Collator(tok, 64)([recs[i]])
        with torch.no_grad():
            out = model(batch.tokens)
        targets = (batch.labels[0] != -100).nonzero().flatten().tolist()
        quarter = {t: int(4 * (j + 0.5) / len(targets)) for j, t in enumerate(targets)}
        for k in range(2):
            logp = torch.log_softmax((out.hidden[k][0] @ model.output.weight.detach().T).double(), dim=-1)
            ces = []
            for t in range(batch.tokens.shape[1] - k - 1):
                if batch.labels[0, t + k + 1] != -100:
                    ces.append(-float(logp[t, batch.labels[0, t + k + 1]]))
                    sums[(k, quarter[t + k + 1])][0] += ces[-1]
                    sums[(k, quarter[t + k + 1])][1] += 1
            assert math.isclose(items[f"ce_head{k + 1}"][f"v{i}"], sum(ces) / len(ces), rel_tol=1e-5)
    for (k, q), (total, n) in sums.items():
        assert math.isclose(quarters[f"ce_head{k + 1}/q{q + 1}"], total / n, rel_tol=1e-5)

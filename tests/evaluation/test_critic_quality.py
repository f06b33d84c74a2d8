"""The critic quality report on the bundled task's validation solutions: an oracle critic that
sees each bug passes, a random one is flagged near chance, and the figures match slow references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wmtp.data.bundled import ensure_bundled
from wmtp.data.dataset import TrainingData
from wmtp.evaluation.critic_quality import measure_critic, near_chance
from wmtp.evaluation.decisive import decisive_token_mask
from wmtp.model.tokenizer import Tokenizer
from wmtp.parallel.reduce import DistEnv

SEQ = 96


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    bundle = ensure_bundled(tmp_path_factory.mktemp("wmtp-cache"), n_problems=60, seed=0)
    tok = Tokenizer(bundle.tokenizer)
    return TrainingData(bundle.valid, tokenizer=tok, max_seq_len=SEQ), tok


class OracleCritic(nn.Module):
    """Values read from a table built from the records: 1 on correct solutions; on incorrect ones 1
    until the decisive span, falling to 0 across it, 0 after (a critic that sees the bug)."""

    def __init__(self, data: TrainingData, tok: Tokenizer):
        super().__init__()
        self.pad = tok.pad_id
        self.table: dict[tuple[int, ...], torch.Tensor] = {}
        for row in range(len(data)):
            rec = data.records([row])[0]
            batch = data.collate([row])
            tokens = batch.tokens[0]
            v = torch.ones(tokens.shape[0])
            if not rec.is_correct:
                e = int(batch.response_end[0])
                v[int(batch.response_start[0]):] = 0.0
                if rec.decisive_span is not None:
                    marked = decisive_token_mask(tok, batch.tokens, batch.response_start, batch.response_end,
                                                 [rec.decisive_span])[0].nonzero().flatten().tolist()
                    if marked:
                        v[:marked[0]] = 1.0
                        for i, j in enumerate(marked):
                            v[j] = 1.0 - (i + 1) / len(marked)
                        v[marked[-1]:e + 1] = 0.0
            self.table[self._key(tokens)] = v
        self.calls = 0

    def _key(self, row: torch.Tensor) -> tuple[int, ...]:
        ids = row.tolist()
        while ids and ids[-1] == self.pad:
            ids.pop()
        return tuple(ids)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = torch.zeros(tokens.shape)
        for b in range(tokens.shape[0]):
            v = self.table[self._key(tokens[b])]
            out[b, :v.shape[0]] = v[:tokens.shape[1]]
        return out


def _measure(critic, data, tok, **kw):
    return measure_critic(critic, data, tok, gamma=0.99, reward_mode="outcome", batch_size=8,
                          layout=DistEnv(0, 1, 0, torch.device("cpu")), **kw)


def test_an_oracle_critic_passes_and_its_figures_are_exact(valid):
    data, tok = valid
    q = _measure(OracleCritic(data, tok), data, tok)
    assert q["critic_quality/solutions"] == len(data)
    assert q["critic_quality/decisive_solutions"] > 5
    assert q["critic_quality/final_value_auc"] == 1.0
    assert q["critic_quality/decisive_td_auc"] == pytest.approx(0.0)  # every decisive δ is the lowest
    assert near_chance(q, 0.7, 0.45) == []


def test_a_random_critic_is_named_near_chance(valid):
    from wmtp.model.args import ModelArgs
    from wmtp.model.value import build_value_model

    data, tok = valid
    torch.manual_seed(0)
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.vocab_size, max_seq_len=SEQ, multiple_of=16)
    critic = build_value_model(args, head="linear", seed=0)
    q = _measure(critic, data, tok)
    assert 0.3 < q["critic_quality/final_value_auc"] < 0.7
    assert 0.4 < q["critic_quality/decisive_td_auc"] < 0.6
    failed = near_chance(q, 0.7, 0.45)
    assert failed and failed[0].startswith("final-value AUC")


def test_max_solutions_and_the_slow_reference(valid):
    data, tok = valid
    oracle = OracleCritic(data, tok)
    q = _measure(oracle, data, tok, max_solutions=10)
    assert q["critic_quality/solutions"] == 10
    # slow reference for the final-value AUC: pairwise over the first 10 rows, value before the last token
    finals, labels = [], []
    for row in range(10):
        batch = data.collate([row])
        v = oracle(batch.tokens)[0]
        finals.append(float(v[int(batch.response_end[0]) - 1]))
        labels.append(bool(batch.is_correct[0]))
    pos = [f for f, y in zip(finals, labels) if y]
    neg = [f for f, y in zip(finals, labels) if not y]
    expected = (sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))
                if pos and neg else float("nan"))
    got = q["critic_quality/final_value_auc"]
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def _verifiable_weighting():
    from wmtp.config.loader import REPO_ROOT, load_config

    return load_config(str(REPO_ROOT / "configs/defaults.yaml"), "verifiable", "local-light", True,
                       ["orchestration.enabled=false"]).stage2.value_weighting


def test_the_weights_of_an_oracle_critic_give_the_bug_less_weight(valid):
    """The run's own weights (`critic_quality(..., with_weights=True)`) at the decisive tokens: an
    oracle critic's TD error is lowest there, so its GAE weights are too (AUC well below 0.5)."""
    from wmtp.evaluation.critic_quality import run_weights

    data, tok = valid
    vw = _verifiable_weighting()
    q = _measure(OracleCritic(data, tok), data, tok, weights=lambda v, b, r: run_weights(vw, v, b, r))
    assert q["critic_quality/decisive_weight_auc"] < 0.3
    assert "critic_quality/decisive_weight_auc" not in _measure(OracleCritic(data, tok), data, tok, max_solutions=8)


def test_the_study_gate_accepts_the_oracle_and_refuses_a_random_critic(valid):
    """`wmtp study`'s critic gate (final-value AUC >= 0.8, decisive TD-error AUC <= 0.40) on measured figures."""
    import yaml

    from wmtp.config.loader import REPO_ROOT
    from wmtp.model.args import ModelArgs
    from wmtp.model.value import build_value_model
    from wmtp.study.experiment import gate
    from wmtp.study.spec import StudySpec

    spec = StudySpec.model_validate(yaml.safe_load((REPO_ROOT / "configs" / "study.micro.yaml").read_text()))
    data, tok = valid

    def figures(critic):
        return {k.split("/", 1)[1]: v for k, v in _measure(critic, data, tok).items()}

    assert gate(spec, "critic", figures(OracleCritic(data, tok))) == []
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.vocab_size, max_seq_len=SEQ, multiple_of=16)
    failed = gate(spec, "critic", figures(build_value_model(args, head="linear", seed=0)))
    assert failed and failed[0].startswith("final-value AUC")


def test_decisive_weight_auc_matches_a_slow_reference(valid):
    """Any target-indexed weights: the mean over incorrect solutions with a decisive span of the
    AUC at the decisive tokens, counted pair by pair; a weighting that zeroes the decisive tokens
    scores below 0.5 and its negation above."""
    from wmtp.evaluation.decisive import decisive_weight_auc

    data, tok = valid
    def weights(batch):  # a fixed random weight per (row, position), whatever the batch's padding
        s = batch.tokens.shape[1]
        return torch.stack([torch.rand(SEQ, generator=torch.Generator().manual_seed(int(r)))[:s] for r in batch.row])

    layout = DistEnv(0, 1, 0, torch.device("cpu"))
    got = decisive_weight_auc(data, tok, weights, batch_size=5, layout=layout)
    slow = []
    for row in range(len(data)):
        rec = data.records([row])[0]
        if rec.is_correct or rec.decisive_span is None:
            continue
        batch = data.collate([row])
        w = weights(batch)[0]
        pos = decisive_token_mask(tok, batch.tokens, batch.response_start, batch.response_end, [rec.decisive_span])[0]
        resp = batch.labels[0] != -100
        a, b = w[pos & resp].tolist(), w[~pos & resp].tolist()
        if a and b:
            slow.append(sum((x > y) + 0.5 * (x == y) for x in a for y in b) / (len(a) * len(b)))
    assert got["weights/decisive_solutions"] == len(slow) > 5
    assert got["weights/decisive_auc"] == pytest.approx(sum(slow) / len(slow), abs=1e-12)

    def against_bug(batch):
        spans = [r.decisive_span for r in data.records(batch.row.tolist())]
        return 1.0 - decisive_token_mask(tok, batch.tokens, batch.response_start, batch.response_end, spans).double()

    low = decisive_weight_auc(data, tok, against_bug, batch_size=5, layout=layout)["weights/decisive_auc"]
    high = decisive_weight_auc(data, tok, lambda b: -against_bug(b), batch_size=5, layout=layout)["weights/decisive_auc"]
    assert low < 0.2 < 0.8 < high

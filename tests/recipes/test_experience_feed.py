"""`ExperienceFeed` checkpoints the batches scored ahead as they were scored (async placement with
queue_depth > 0): a feed restored from its state gives back the same batches with the same scores
although its scorer now holds another critic, and refuses a checkpoint whose rows the data no
longer gives. (End to end with Ray's experience actors: tests/recipes/test_resume_matrix.py.)"""

from __future__ import annotations

import io

import pytest
import torch

from tests.recipes.harness import recipe_config
from wmtp.data.errors import DataError
from wmtp.data.streams import load_data, train_stream
from wmtp.model.value import value_args_from_policy
from wmtp.parallel.build import build_policy
from wmtp.parallel.reduce import process_layout
from wmtp.recipes.experience import ExperienceFeed, ExperienceSpec, LearnerScorer, build_scoring_model


def scorer(args, seed: int, version: int) -> LearnerScorer:
    spec = ExperienceSpec("verifiable", args)
    torch.manual_seed(seed)
    model = build_scoring_model(spec, None)
    for p in model.parameters():  # a critic of its own (seeded), not zero-initialised heads
        torch.nn.init.normal_(p, std=0.1)
    out = LearnerScorer(spec, model)
    out.version = version
    return out


def roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load, as the checkpoint's `extra_rank{r}.pt` stores it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_restored_feed_gives_the_scored_ahead_batches_with_their_scores(tmp_path):
    cfg = recipe_config("verifiable", tmp_path)
    layout = process_layout(False)
    data = load_data(cfg)
    args = value_args_from_policy(build_policy(cfg, data.tokenizer.vocab_size, layout.device).args)

    def stream(seed: int = cfg.run.seed):
        return train_stream(data.train, cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": seed})}),
                            layout, samples="all")

    first = ExperienceFeed(stream(), scorer(args, seed=1, version=0), queue_depth=2)
    first.next()
    state = roundtrip(first.state_dict())
    assert len(state["ahead"]) == 2 and all(a["critic_version"] == 0 for a in state["ahead"])

    newer = scorer(args, seed=2, version=3)  # what the resumed run scores new batches with
    resumed = ExperienceFeed(stream(), newer, queue_depth=2)
    resumed.load_state_dict(state)
    for _ in range(2):
        want, got = first.next(), resumed.next()
        assert torch.equal(got.batch.row, want.batch.row)
        assert got.critic_version == 0
        for field in ("values_old", "advantages", "returns"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field
        rescored = LearnerScorer(newer.spec, newer.model)
        rescored.submit(got.batch)
        assert not torch.equal(rescored.get().values_old, got.values_old)  # what rescoring would have given
    assert resumed.state_dict()["consumed"] == first.state_dict()["consumed"]

    other = ExperienceFeed(stream(seed=cfg.run.seed + 1), newer, queue_depth=2)
    with pytest.raises(DataError, match="training data changed"):
        other.load_state_dict({**state, "consumed": {**state["consumed"], "seed": cfg.run.seed + 1}})

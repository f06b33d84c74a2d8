"""Samplers: determinism, exact resume, disjoint equal rank shards, each sampler's contract."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from wmtp.data.errors import DataError
from wmtp.data.index import MetadataIndex
from wmtp.data.samplers import SAMPLERS, build_sampler


def make_index(n=103, seed=0) -> MetadataIndex:
    rng = np.random.default_rng(seed)
    code = np.sort(rng.integers(0, n // 4, size=n)).astype(np.int32)
    return MetadataIndex(
        offset=np.arange(n, dtype=np.int64) * 100, length=np.full(n, 99, np.int32),
        is_correct=rng.random(n) < 0.55, difficulty=rng.integers(1, 4, size=n).astype(np.int16),
        n_tokens=rng.integers(20, 200, size=n).astype(np.int32), problem_code=code,
        problem_names=pa.array([f"p{i}" for i in range(n // 4)]),
    )


INDEX = make_index()
NAMES = sorted(SAMPLERS)


def _take(s, n_batches, bs):
    return [s.next(bs).tolist() for _ in range(n_batches)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bucketing", [0, 2])
def test_deterministic_and_resume_exact(name, bucketing):
    kw = dict(samples="all", seed=3, rank=1, world_size=2, length_bucketing=bucketing, batch_size=5)
    a = build_sampler(name, INDEX, **kw)
    ref = _take(a, 30, 5)  # crosses several epochs
    assert ref == _take(build_sampler(name, INDEX, **kw), 30, 5)
    for k in (0, 7, 11, 23):
        s = build_sampler(name, INDEX, **kw)
        _take(s, k, 5)
        state = s.state_dict()
        resumed = build_sampler(name, INDEX, **kw)
        resumed.load_state_dict(state)
        assert _take(resumed, 30 - k, 5) == ref[k:], (name, k)
    assert ref != _take(build_sampler(name, INDEX, **{**kw, "seed": 4}), 30, 5)


@pytest.mark.parametrize("name", NAMES)
def test_rank_shards_are_disjoint_and_equal(name):
    w = 3
    per_rank = [build_sampler(name, INDEX, samples="all", seed=0, rank=r, world_size=w) for r in range(w)]
    orders = [s.rank_order(0) for s in per_rank]
    assert len({len(o) for o in orders}) == 1
    glob = per_rank[0].epoch_order(0)
    m = len(glob) - len(glob) % w
    # rank r takes positions r, r+W, ...: together exactly the first m items of the global order
    merged = np.stack(orders, axis=1).reshape(m, *glob.shape[1:])
    assert (merged == glob[:m]).all()
    if name in ("random", "curriculum", "pairwise"):  # permutations: no item repeats
        flat = [tuple(np.atleast_1d(x)) for o in orders for x in o]
        assert len(flat) == len(set(flat))


def test_correct_only_and_all():
    s = build_sampler("random", INDEX, samples="correct", seed=0)
    order = s.rank_order(0)
    assert sorted(order.tolist()) == np.flatnonzero(INDEX.is_correct).tolist()
    s_all = build_sampler("random", INDEX, samples="all", seed=0)
    assert sorted(s_all.rank_order(0).tolist()) == list(range(len(INDEX)))
    assert len(s_all) == len(INDEX)


def test_pairwise_pairs_one_problem():
    s = build_sampler("pairwise", INDEX, seed=0)
    pairs = s.next(200)
    assert pairs.shape == (200, 2)
    assert INDEX.is_correct[pairs[:, 0]].all() and not INDEX.is_correct[pairs[:, 1]].any()
    assert (INDEX.problem_code[pairs[:, 0]] == INDEX.problem_code[pairs[:, 1]]).all()
    # every incorrect solution of a problem with a correct one appears once per epoch
    code = INDEX.problem_code
    has_correct = np.isin(code, code[INDEX.is_correct])
    want = np.flatnonzero(~INDEX.is_correct & has_correct)
    assert sorted(s.epoch_order(0)[:, 1].tolist()) == want.tolist()


def test_difficulty_balanced_is_uniform_over_levels():
    idx = make_index(3000, seed=1)
    idx.difficulty[:] = np.where(np.arange(3000) < 2700, 1, np.where(np.arange(3000) < 2950, 2, 3))
    s = build_sampler("difficulty_balanced", idx, samples="all", seed=0)
    counts = np.bincount(idx.difficulty[s.epoch_order(0)], minlength=4)[1:]
    assert counts.sum() == 3000 and (np.abs(counts - 1000) < 100).all()


def test_length_balanced_is_uniform_over_length_bins():
    idx = make_index(4000, seed=2)
    idx.n_tokens[:] = np.where(np.arange(4000) < 3600, 30, np.arange(4000))  # mostly short
    s = build_sampler("length_balanced", idx, samples="all", seed=0, n_bins=4)
    groups = s.groups()
    drawn = np.searchsorted(np.unique(groups), groups[s.epoch_order(0)])
    counts = np.bincount(drawn)
    assert len(counts) >= 2 and counts.min() > 0.6 * counts.max()


def test_curriculum_first_epoch_easy_to_hard():
    s = build_sampler("curriculum", INDEX, samples="all", seed=0, curriculum_epochs=1)
    d0 = INDEX.difficulty[s.epoch_order(0)]
    assert (np.diff(d0) >= 0).all()
    assert not (np.diff(INDEX.difficulty[s.epoch_order(1)]) >= 0).all()


def test_length_bucketing_groups_similar_lengths():
    s = build_sampler("random", INDEX, samples="all", seed=0, length_bucketing=4, batch_size=5)
    plain = build_sampler("random", INDEX, samples="all", seed=0)
    assert sorted(s.rank_order(0).tolist()) == sorted(plain.rank_order(0).tolist())

    def spread(order):
        b = [INDEX.n_tokens[order[i:i + 5]] for i in range(0, len(order) - 4, 5)]
        return np.mean([x.max() - x.min() for x in b])

    assert spread(s.rank_order(0)) < 0.5 * spread(plain.rank_order(0))


def test_errors_name_allowed_values():
    with pytest.raises(DataError, match="allowed values are random, pairwise"):
        build_sampler("shuffle", INDEX)
    with pytest.raises(DataError, match="samples='some'"):
        build_sampler("random", INDEX, samples="some")
    s = build_sampler("random", INDEX, seed=0, world_size=2)
    with pytest.raises(DataError, match="world_size=2"):
        build_sampler("random", INDEX, seed=0, world_size=4).load_state_dict(s.state_dict())


def test_no_quadratic_blowup():
    big = make_index(200_000, seed=3)
    for name in NAMES:
        s = build_sampler(name, big, samples="all", seed=0, rank=0, world_size=2)
        assert len(s.next(1000)) == 1000

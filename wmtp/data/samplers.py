"""Samplers over the metadata index: which rows (or (correct, incorrect) row pairs) form each batch.

Every sampler is a deterministic function of ``(seed, epoch)`` giving one *global* epoch order;
rank ``r`` of ``W`` takes ``order[r::W]`` after the order is cut to a multiple of ``W`` (so ranks get
disjoint items and equal counts; at most ``W-1`` items per epoch are left out, different ones each
epoch). The state is just ``(epoch, position)``: ``load_state_dict`` on a fresh sampler continues
with the exact next batch. All work is O(N) or O(N log N) numpy over the index columns.

Registry names (config ``data.sampler``): ``random``, ``pairwise``, ``difficulty_balanced``,
``length_balanced``, ``curriculum``; ``samples`` is ``correct`` (only correct solutions) or ``all``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from wmtp.data.errors import DataError
from wmtp.data.index import MetadataIndex

SAMPLES = ("correct", "all")


class Sampler(ABC):
    """Base: subclasses implement ``epoch_order(epoch) -> [M] rows`` (or ``[M, 2]`` pairs)."""

    name: ClassVar[str] = ""
    _salt: ClassVar[int] = 0

    def __init__(self, index: MetadataIndex, *, samples: str = "correct", seed: int = 0, rank: int = 0,
                 world_size: int = 1, length_bucketing: int = 0, batch_size: int | None = None):
        if samples not in SAMPLES:
            raise DataError(f"samples={samples!r}: allowed values are {', '.join(SAMPLES)}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank={rank} must be in [0, world_size={world_size})")
        if length_bucketing and not batch_size:
            raise DataError("length_bucketing needs batch_size")
        self.index, self.samples, self.seed = index, samples, int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.length_bucketing, self.batch_size = int(length_bucketing), batch_size
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, np.ndarray] | None = None
        self.eligible = np.flatnonzero(index.is_correct) if samples == "correct" else np.arange(len(index))
        if len(self.eligible) == 0:
            raise DataError(f"sampler {self.name!r}: the index has no {'correct ' if samples == 'correct' else ''}samples")

    # ---- the epoch order ----
    def _rng(self, epoch: int, *extra: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, self._salt, *extra])

    @abstractmethod
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global item order of ``epoch`` (identical on every rank)."""

    def rank_order(self, epoch: int) -> np.ndarray:
        """This rank's items of ``epoch``: the global order cut to a multiple of W, then ``[rank::W]``."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order = self.epoch_order(epoch)
        m = len(order) - len(order) % self.world_size
        if m == 0:
            raise DataError(f"sampler {self.name!r}: {len(order)} items cannot be shared by {self.world_size} ranks")
        mine = order[:m][self.rank::self.world_size]
        if self.length_bucketing:
            mine = self._bucket(mine, epoch)
        self._cache = (epoch, mine)
        return mine

    def _bucket(self, items: np.ndarray, epoch: int) -> np.ndarray:
        """Sort windows of ``length_bucketing`` batches by length, then shuffle the batches in each window."""
        sizes = self.index.sizes()
        key = sizes[items] if items.ndim == 1 else sizes[items].max(axis=1)
        bs = int(self.batch_size)  # type: ignore[arg-type]  # set whenever length_bucketing is (checked in __init__)
        win = bs * self.length_bucketing
        out = []
        for w, start in enumerate(range(0, len(items), win)):
            chunk = items[start:start + win]
            chunk = chunk[np.argsort(key[start:start + win], kind="stable")]
            batches = [chunk[i:i + bs] for i in range(0, len(chunk), bs)]
            # keep a trailing partial batch last so batch boundaries stay at multiples of bs
            full = len(chunk) // bs
            perm = self._rng(epoch, 7, self.rank, w).permutation(full)
            out += [batches[i] for i in perm] + batches[full:]
        return np.concatenate(out) if out else items

    def __len__(self) -> int:
        """Items per rank per epoch."""
        return len(self.rank_order(self.epoch))

    # ---- consumption ----
    def next(self, n: int) -> np.ndarray:
        """The next ``n`` items of this rank (rows ``[n]`` or pairs ``[n, 2]``), crossing epochs as needed."""
        parts = []
        need = n
        while need > 0:
            order = self.rank_order(self.epoch)
            take = order[self.position:self.position + need]
            parts.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return np.concatenate(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "epoch": self.epoch, "position": self.position, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "samples": self.samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("name", "seed", "world_size", "samples"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(f"sampler state has {key}={state[key]!r} but this sampler has {getattr(self, key)!r}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class RandomSampler(Sampler):
    """A fresh permutation of the eligible rows every epoch."""

    name = "random"
    _salt = 1

    def epoch_order(self, epoch: int) -> np.ndarray:
        return self._rng(epoch).permutation(self.eligible)


class CurriculumSampler(Sampler):
    """Easy to hard: the first ``curriculum_epochs`` epochs are sorted by difficulty (random within a
    level, unknown difficulty last); later epochs are random permutations."""

    name = "curriculum"
    _salt = 2

    def __init__(self, index: MetadataIndex, *, curriculum_epochs: int = 1, **kw: Any):
        super().__init__(index, **kw)
        self.curriculum_epochs = curriculum_epochs

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = self._rng(epoch)
        if epoch >= self.curriculum_epochs:
            return rng.permutation(self.eligible)
        d = self.index.difficulty[self.eligible].astype(np.int64)
        d = np.where(d < 0, np.iinfo(np.int64).max, d)
        return self.eligible[np.lexsort((rng.random(len(d)), d))]


class _BalancedSampler(Sampler):
    """Each draw picks a group uniformly, then the next row of that group's reshuffled cycle; an epoch
    has as many draws as eligible rows (small groups repeat, large ones are sub-sampled)."""

    @abstractmethod
    def groups(self) -> np.ndarray:
        """The group key of each eligible row ``[len(eligible)]``."""

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = self._rng(epoch)
        key = self.groups()
        levels, inverse = np.unique(key, return_inverse=True)
        choice = rng.integers(len(levels), size=len(self.eligible))
        out = np.empty(len(self.eligible), dtype=np.int64)
        for g in range(len(levels)):
            rows = self.eligible[inverse == g]
            where = np.flatnonzero(choice == g)
            reps = -(-len(where) // len(rows))
            cycle = np.concatenate([rng.permutation(rows) for _ in range(max(reps, 1))])
            out[where] = cycle[:len(where)]
        return out


class DifficultyBalancedSampler(_BalancedSampler):
    """Uniform over difficulty levels (unknown difficulty is its own level)."""

    name = "difficulty_balanced"
    _salt = 3

    def groups(self) -> np.ndarray:
        return self.index.difficulty[self.eligible]


class LengthBalancedSampler(_BalancedSampler):
    """Uniform over ``n_bins`` length quantile bins (tokens, or bytes for an index without tokenizer)."""

    name = "length_balanced"
    _salt = 4

    def __init__(self, index: MetadataIndex, *, n_bins: int = 4, **kw: Any):
        self.n_bins = n_bins
        super().__init__(index, **kw)

    def groups(self) -> np.ndarray:
        sizes = self.index.sizes()[self.eligible]
        edges = np.unique(np.quantile(sizes, np.linspace(0, 1, self.n_bins + 1)[1:-1]))
        return np.searchsorted(edges, sizes, side="left")  # ties at an edge go to the lower bin


class PairwiseSampler(Sampler):
    """(correct, incorrect) pairs of one problem: every incorrect solution of a problem that has a
    correct one, paired with a random correct solution of that problem; shuffled each epoch.
    Items are ``[2]`` row pairs. ``samples`` is ignored (pairs need both labels)."""

    name = "pairwise"
    _salt = 5

    def __init__(self, index: MetadataIndex, **kw: Any):
        kw["samples"] = "all"
        super().__init__(index, **kw)
        code = index.problem_code.astype(np.int64)
        correct = np.flatnonzero(index.is_correct)
        self._correct = correct[np.argsort(code[correct], kind="stable")]  # grouped by problem
        n_codes = len(index.problem_names)
        self._count = np.bincount(code[correct], minlength=n_codes)
        self._start = np.concatenate([[0], np.cumsum(self._count)[:-1]])
        incorrect = np.flatnonzero(~index.is_correct)
        self._incorrect = incorrect[self._count[code[incorrect]] > 0]
        if len(self._incorrect) == 0:
            raise DataError("sampler 'pairwise': no problem has both a correct and an incorrect solution")

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = self._rng(epoch)
        code = self.index.problem_code[self._incorrect].astype(np.int64)
        pick = self._start[code] + (rng.random(len(code)) * self._count[code]).astype(np.int64)
        pairs = np.stack([self._correct[pick], self._incorrect], axis=1)
        return pairs[rng.permutation(len(pairs))]


SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (RandomSampler, PairwiseSampler, DifficultyBalancedSampler, LengthBalancedSampler, CurriculumSampler)
}


def build_sampler(name: str, index: MetadataIndex, **kwargs: Any) -> Sampler:
    """Sampler by registry name; kwargs: samples, seed, rank, world_size, length_bucketing, batch_size."""
    if name not in SAMPLERS:
        raise DataError(f"unknown sampler {name!r}: allowed values are {', '.join(SAMPLERS)}")
    return SAMPLERS[name](index, **kwargs)

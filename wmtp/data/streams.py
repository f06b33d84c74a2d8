"""What a recipe trains and validates on: the data files (or the bundled task) with their
tokenizer, endless checkpointable batch streams sharded by rank, the fixed validation batches,
and the per-batch masks and padding helpers of one step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wmtp.config.schema import WMTPConfig
from wmtp.data.collator import Batch
from wmtp.data.dataset import TrainingData
from wmtp.data.samplers import Sampler
from wmtp.parallel.reduce import DistEnv, global_sum


@dataclass
class RecipeData:
    tokenizer: Any
    train: TrainingData
    valid: TrainingData


def load_data(cfg: WMTPConfig) -> RecipeData:
    """The configured JSONL files, or the bundled synthetic task (made on first use, then reused)."""
    from wmtp.model.tokenizer import Tokenizer

    train, valid, tok_path = cfg.data.train, cfg.data.valid, cfg.model.tokenizer
    if train is None or valid is None or tok_path is None:
        from wmtp.data.bundled import ensure_bundled

        bundled = ensure_bundled(n_problems=cfg.data.synth_problems, seed=cfg.data.synth_seed)
        train, valid = train or bundled.train, valid or bundled.valid
        tok_path = tok_path or bundled.tokenizer
    tokenizer = Tokenizer(str(tok_path))
    kw: dict[str, Any] = dict(tokenizer=tokenizer, max_seq_len=cfg.data.max_seq_len, on_bad_line=cfg.data.on_bad_line)
    return RecipeData(tokenizer, TrainingData(train, **kw), TrainingData(valid, **kw))


class BatchStream:
    """Endless batches from a sampler; its position is the sampler's state (checkpointed)."""

    def __init__(self, data: TrainingData, sampler: Sampler, batch_size: int, device: torch.device,
                 pairs: bool = False):
        self.data, self.sampler, self.batch_size, self.device = data, sampler, batch_size, device
        self.pairs = pairs
        self._it: Iterator = (data.pair_batches if pairs else data.batches)(sampler, batch_size)

    def next(self):
        """The next batch on the device."""
        return next(self._it).to(self.device)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def train_stream(data: TrainingData, cfg: WMTPConfig, layout: DistEnv, *, samples: str | None = None,
                 sampler: str | None = None) -> BatchStream:
    name = sampler or cfg.data.sampler
    s = data.sampler(name, samples=samples or cfg.data.samples, seed=cfg.run.seed, rank=layout.rank,
                     world_size=layout.world_size,
                     length_bucketing=8 if cfg.data.length_bucketing else 0,
                     batch_size=cfg.data.batch_size)
    return BatchStream(data, s, cfg.data.batch_size, layout.device, pairs=name == "pairwise")


# What each recipe's training stream draws by default (others: `data.samples`): the critic and the
# verifiable recipe see every solution; the policy mask (`policy_labels`) picks what a policy learns from.
RECIPE_DRAWS = {"verifiable": "all", "critic": "all"}


def drawn_samples(cfg: WMTPConfig) -> str:
    """The solutions the run's training stream draws (`data.draw`): the recipe's default, only the
    ones the policy learns from (`data.samples`), or all of them. A study draws the same batches for
    every arm of a setting this way."""
    return {"recipe": RECIPE_DRAWS.get(cfg.recipe, cfg.data.samples), "samples": cfg.data.samples,
            "all": "all"}[cfg.data.draw]


def valid_batches(data: TrainingData, cfg: WMTPConfig, layout: DistEnv, *, samples: str = "all",
                  n_batches: int | None = None) -> list[Batch]:
    """A fixed validation set: the first `eval_batches` batches of a seeded order, per rank."""
    s = data.sampler("random", samples=samples, seed=cfg.run.seed + 7919, rank=layout.rank,
                     world_size=layout.world_size)
    n = n_batches or cfg.train.eval_batches
    return [data.collate(s.next(cfg.data.batch_size)).to(layout.device) for _ in range(n)]


def stack_padded(tensors: list[Tensor]) -> Tensor:
    """Micro-batches `[B_i, S_i]` → one `[ΣB_i, max S_i]` (right-padded with zeros/False), so a
    statistic over the whole step is one call."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors])


def split_padded(x: Tensor, shapes: list[torch.Size]) -> list[Tensor]:
    """Inverse of `stack_padded`: rows back to each micro-batch, cropped to its length."""
    out, row = [], 0
    for b, s in shapes:
        out.append(x[row:row + b, :s])
        row += b
    return out


def policy_labels(batch: Batch, samples: str) -> Tensor:
    """Targets the policy learns from: all responses, or only those of correct solutions."""
    if samples == "all":
        return batch.labels
    return batch.labels.masked_fill(~batch.is_correct[:, None], -100)


def truncated_samples(batches: list[Batch], layout: DistEnv) -> Tensor:
    """How many of the step's responses (all micro-batches, all ranks) `data.max_seq_len` cut before
    their EOS; their last token gets no terminal reward (docs/MATH.md "Truncated responses")."""
    local = sum(int(b.truncated.sum()) for b in batches if b.truncated is not None)
    return global_sum(torch.tensor(float(local), dtype=torch.float64, device=layout.device), layout)


def response_mask(batch: Batch) -> Tensor:
    """`[B, S]` bool: response tokens (solution body + EOS), whatever their correctness."""
    return batch.labels != -100

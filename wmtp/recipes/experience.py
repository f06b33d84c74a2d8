"""Experience scoring, the recipes layer; the same concept as wmtp.orchestration.experience, in the learner.

The experience phase (no grad): a raw batch becomes a `ScoredBatch` (docs/DISTRIBUTED.md).

verifiable: critic snapshot values `V_old` → GAE advantages and returns (per sample, so it can run
    anywhere: in the learner (`colocated`) or in Ray actors (`async`)).
rho1: reference per-token losses `ℓ^ref(j)`, target-indexed (`[B, S]`, 0 where j is not a target).

Everything that needs global batch statistics (zscore, top-k) stays in the learner. Scoring runs
under the learner's precision policy (`autocast_context(train.precision)`), so at bf16 it costs a
bf16 forward, and on CPU tests (fp32) the numbers are exactly those of the learner's forward.

Colocated, nothing is replicated (`LearnerScorer`): the verifiable recipe scores `V_old` with the
learner's own (FSDP-sharded) critic before its update when `critic_sync_interval` is 1 (exact: that
is the critic of the last publish), and with a `CriticSnapshot` otherwise: a second module sharded
like the critic, in the compute dtype, refreshed from this rank's local shards at each publish (no
gather) and checkpointed with its version. Rho-1's frozen reference is sharded the same way.

(Over 300 lines on purpose: the scorers, the snapshot, the feed and the stored reference losses
are the two sides of one contract, `ScoredBatch`, and read best together.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, cast

import numpy as np
import torch
from torch import Tensor, nn

from wmtp.data.collator import Batch
from wmtp.losses.alignment import to_next_token
from wmtp.losses.mtp import mtp_token_losses
from wmtp.model.args import ModelArgs
from wmtp.model.transformer import Transformer, allocate_empty, build_model, cast_parameters
from wmtp.model.value import ValueModel, build_value_model
from wmtp.recipes.interfaces import SCORED_FIELDS, ScoredBatch
from wmtp.training.precision import autocast_context, compute_dtype
from wmtp.weighting.gae import compute_gae

_Scoring = TypeVar("_Scoring", Transformer, ValueModel)


@dataclass(frozen=True)
class ExperienceSpec:
    """All an experience worker needs (picklable): which models to build and how to score."""

    kind: Literal["verifiable", "rho1"]
    model_args: ModelArgs  # critic backbone args (verifiable) or reference model args (rho1)
    value_head: str = "linear"
    gamma: float = 0.99
    lam: float = 0.95
    reward_mode: str = "outcome"
    chunk_size: int = 1024
    precision: str = "fp32"  # `train.precision`: scoring autocast, and the dtype of scoring models


def build_scoring_model(spec: ExperienceSpec, state_dict: Mapping[str, Tensor] | None,
                        device: torch.device | str = "cpu") -> Transformer | ValueModel:
    """The critic replica / frozen reference an experience actor scores with (eval mode, compute
    dtype: a bf16 run holds bf16 replicas)."""
    if spec.kind == "verifiable":
        model: Transformer | ValueModel = build_value_model(spec.model_args, spec.value_head, device="meta")
    else:
        model = build_model(spec.model_args, device="meta")
    model = allocate_empty(model, device, dtype=compute_dtype(spec.precision))  # also under the memory trace
    (model.backbone if isinstance(model, ValueModel) else model).init_rope()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def critic_experience(critic: ValueModel, batch: Batch, *, gamma: float, lam: float, reward_mode: str,
                      version: int) -> ScoredBatch:
    """V_old `[B, S]` and GAE (advantages, returns) `[B, S]` on response tokens, R = is_correct."""
    values = critic(batch.tokens).float()
    resp = batch.labels != -100
    adv, ret = compute_gae(values, resp, batch.is_correct.to(values.dtype), gamma, lam, reward_mode,
                           truncated=batch.truncated)
    return ScoredBatch(batch, values_old=values, advantages=adv, returns=ret, critic_version=version)


@torch.no_grad()
def reference_token_losses(reference: Transformer, batch: Batch, chunk_size: int = 1024) -> Tensor:
    """`ℓ^ref(j) = −log p_ref(x_j | x_{<j})`, target-indexed `[B, S]` (0 where j is no target)."""
    out = reference(batch.tokens, n_future_heads=1)
    next_token = mtp_token_losses(out.hidden, reference.output.weight,  # type: ignore[union-attr]  # a policy's
                                  batch.labels, chunk_size)[..., 0]
    return to_next_token(next_token).float()


@torch.no_grad()
def score_batch(spec: ExperienceSpec, model: Transformer | ValueModel, batch: Batch, version: int = 0) -> ScoredBatch:
    """The one scoring function, used by the colocated scorer and by Ray experience actors; the
    forward runs under `autocast_context(spec.precision)` (the learner's precision policy)."""
    with autocast_context(batch.tokens.device.type, spec.precision):
        if spec.kind == "verifiable":
            return critic_experience(cast(ValueModel, model), batch, gamma=spec.gamma, lam=spec.lam, reward_mode=spec.reward_mode,
                                     version=version)
        return ScoredBatch(batch, ref_losses=reference_token_losses(cast(Transformer, model), batch, spec.chunk_size),
                           critic_version=version)


class LearnerScorer:
    """`ExperienceScorer` in the learner process (`colocated`): scores each batch on submit with a
    model the learner already holds, no replica: the learner's own critic (verifiable,
    `critic_sync_interval` 1, or a frozen critic), its `CriticSnapshot` (interval > 1) or the frozen
    reference (Rho-1). Sharded models score in lockstep on every rank (every rank submits the same
    number of batches). The learner updates `model` in place; `publish_critic` only moves the
    version."""

    def __init__(self, spec: ExperienceSpec, model: Transformer | ValueModel):
        self.spec, self.model = spec, model
        self.version = 0
        self._ready: deque[ScoredBatch] = deque()

    def submit(self, batch: Batch) -> None:
        self._ready.append(score_batch(self.spec, self.model, batch, self.version))

    def get(self) -> ScoredBatch:
        return self._ready.popleft()

    def in_flight(self) -> list[ScoredBatch]:
        return list(self._ready)

    def resume_in_flight(self, scored: ScoredBatch) -> None:
        self._ready.append(scored)

    def publish_critic(self, model: nn.Module, version: int) -> None:
        if model is not self.model:
            raise ValueError("LearnerScorer scores with the model it was given; publish that model")
        self.version = version

    def close(self) -> None:
        self._ready.clear()


def reshard(model: nn.Module) -> None:
    """Free every gathered FSDP2 unit of `model`, so its parameters are the sharded DTensors."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def local_tensor(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor (a view: writes go to the parameter), or `t` itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class CriticSnapshot:
    """The critic as of its last publish, for `critic_sync_interval` > 1: a second value model with
    the learner critic's sharding (FSDP2 per block, same mesh) in the compute dtype, so it holds
    1/world of the critic per rank (half of it again at bf16). `refresh` copies this rank's local
    shards (no gather, no communication); `model` is checkpointed (DCP shards) and `version` with
    it (`state_dict`), so a resumed run scores with the same snapshot as an uninterrupted one."""

    def __init__(self, critic: ValueModel, dtype: torch.dtype):
        from torch._subclasses.fake_tensor import is_fake

        from wmtp.parallel.fsdp import apply_fsdp

        first = next(critic.parameters())
        device = local_tensor(first).device
        # The compute dtype, still shapes only (assigned, not swapped: see below).
        model = cast_parameters(build_value_model(critic.args, critic.value_head.kind, device="meta"), dtype)
        mesh = getattr(first, "device_mesh", None)
        if is_fake(local_tensor(first)):
            # The memory trace (FakeTensorMode) cannot swap tensors as `to_empty` does: allocate
            # first (fake: no memory; the trace measures from after setup), then shard.
            allocate_empty(model, device)
            if mesh is not None:
                apply_fsdp(model, mesh=mesh, mixed_precision=False)
        else:
            if mesh is not None:
                apply_fsdp(model, mesh=mesh, mixed_precision=False)
            model.to_empty(device=device)
        model.backbone.init_rope()
        self.model, self.version = model.eval(), 0
        self.refresh(critic, 0)

    @torch.no_grad()
    def refresh(self, critic: nn.Module, version: int) -> int:
        """Copy this rank's shards of `critic` in; returns the bytes written (this rank)."""
        for model in (self.model, critic):  # a root FSDP unit stays gathered after a forward
            reshard(model)
        mine, theirs = dict(self.model.named_parameters()), dict(critic.named_parameters())
        if mine.keys() != theirs.keys():
            raise ValueError(f"critic snapshot and critic differ: {sorted(mine.keys() ^ theirs.keys())[:5]}")
        written = 0
        for name, p in mine.items():
            local = local_tensor(p)
            local.copy_(local_tensor(theirs[name]))
            written += local.numel() * local.element_size()
        self.version = version
        return written

    def state_dict(self) -> dict:
        return {"version": self.version}

    def load_state_dict(self, state: dict) -> None:
        self.version = int(state["version"])


def frozen_scoring_model(model: _Scoring, precision: str, device: torch.device) -> _Scoring:
    """A frozen model (the Rho-1 reference) as one unsharded learner holds it: no grad, no
    optimizer, compute dtype, on `device` (under FSDP2 the recipe builds it sharded instead:
    `Rho1WeightedRecipe.sharded_reference`)."""
    model = cast_parameters(model, compute_dtype(precision)).eval()
    if device.type == "meta":
        return model
    (model.backbone if isinstance(model, ValueModel) else model).init_rope()
    return model.to(device)


class ExperienceFeed:
    """Keeps the scorer `queue_depth` batches ahead of the learner, in data order.

    Checkpoints (`state_dict`) record the sampler position of the last *consumed* batch and the
    batches scored ahead of it as they were scored (`ExperienceScorer.in_flight`: their scored
    tensors, critic version and row ids). A resumed run draws those batches again from the
    restored sampler (same rows, checked) and hands them to the scorer with their saved scores
    (`resume_in_flight`) before anything new is scored: batches the uninterrupted run scored
    with an earlier critic are not rescored with the restored one, so resume is exact at any
    `queue_depth`.
    """

    def __init__(self, stream, scorer, queue_depth: int = 0):
        self.stream, self.scorer, self.queue_depth = stream, scorer, queue_depth
        self._states: deque[dict] = deque()  # the sampler position after each batch submitted ahead
        self._consumed = stream.state_dict()

    def next(self) -> ScoredBatch:
        """The next scored batch, in data order."""
        while len(self._states) < self.queue_depth + 1:
            self.scorer.submit(self.stream.next())
            self._states.append(self.stream.state_dict())
        self._consumed = self._states.popleft()
        return self.scorer.get()

    def state_dict(self) -> dict:
        ahead = self.scorer.in_flight() if self._states else []
        if len(ahead) != len(self._states):
            raise RuntimeError(f"experience scorer holds {len(ahead)} batches, the feed submitted {len(self._states)}")
        return {"consumed": self._consumed,
                "ahead": [{"rows": scored.batch.row.detach().cpu().clone(), "critic_version": scored.critic_version,
                           "stats": dict(scored.stats),
                           **{f: None if getattr(scored, f) is None else getattr(scored, f).detach().cpu().clone()
                              for f in SCORED_FIELDS}}
                          for scored in ahead]}

    def load_state_dict(self, state: dict) -> None:
        if "consumed" not in state:  # a checkpoint written before the feed kept its queue
            state = {"consumed": state, "ahead": []}
        self.stream.load_state_dict(state["consumed"])
        self._consumed = state["consumed"]
        self._states.clear()
        for saved in state["ahead"]:
            batch = self.stream.next()
            if not torch.equal(batch.row.cpu(), saved["rows"]):
                from wmtp.data.errors import DataError

                raise DataError(f"the checkpoint's experience queue holds rows {saved['rows'].tolist()} scored ahead, "
                                f"but the data now gives rows {batch.row.tolist()} there: the training data changed "
                                f"since the checkpoint; resume with the same data, or start a new run.name")
            device = batch.tokens.device
            self.scorer.resume_in_flight(ScoredBatch(
                batch, **{f: None if saved[f] is None else saved[f].to(device) for f in SCORED_FIELDS},
                critic_version=int(saved["critic_version"]), stats=dict(saved["stats"])))
            self._states.append(self.stream.state_dict())


class PrecomputedReferenceLosses:
    """Reference losses written by `wmtp data score-reference`: row r's target-indexed losses are
    `losses[offsets[r]:offsets[r+1]]` over its collated tokens (same tokenizer and max_seq_len)."""

    def __init__(self, path: str | Path, max_seq_len: int):
        from wmtp.data.errors import DataError

        path = Path(path)
        if not path.exists():
            raise DataError(f"data.reference_losses: {path} does not exist (run `wmtp data score-reference`)")
        data = np.load(path)
        self.offsets, self.losses = data["offsets"], data["losses"]
        if int(data["max_seq_len"]) != max_seq_len:
            raise DataError(f"{path} was scored with max_seq_len={int(data['max_seq_len'])}, "
                            f"but data.max_seq_len={max_seq_len}; rescore or change data.max_seq_len")

    def lookup(self, batch: Batch) -> Tensor:
        out = torch.zeros(batch.tokens.shape, dtype=torch.float32)
        for i, r in enumerate(batch.row.tolist()):
            row = self.losses[self.offsets[r]:self.offsets[r + 1]]
            out[i, :len(row)] = torch.from_numpy(row)
        return out.to(batch.tokens.device)


def write_reference_losses(reference: Transformer, data, out_path: str | Path, *, batch_size: int,
                           max_seq_len: int, chunk_size: int = 1024) -> Path:
    """Score every row of `data` (a `TrainingData`) once with the frozen reference (batch inference)."""
    n = len(data)
    pieces: list[np.ndarray] = []
    lengths = np.zeros(n, dtype=np.int64)
    device = next(reference.parameters()).device
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        batch = data.collate(rows).to(device)
        losses = reference_token_losses(reference, batch, chunk_size).float().cpu()
        for i, length in enumerate(batch.attention_mask.sum(1).tolist()):
            pieces.append(losses[i, :length].numpy())
            lengths[start + i] = length
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.npz")
    np.savez(tmp, offsets=offsets, losses=np.concatenate(pieces) if pieces else np.zeros(0, np.float32),
             max_seq_len=np.int64(max_seq_len))
    tmp.replace(out_path)
    return out_path

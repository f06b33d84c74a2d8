"""Experience scoring, the cluster layer; the same concept as wmtp.recipes.experience, in Ray actors.

`async` placement: experience actors score batches ahead of the learner (docs/DISTRIBUTED.md).

Each learner rank owns a pool of `orchestration.num_experience_actors` named Ray actors
(`wmtp-experience-<run>-r<rank>-<i>`), each holding a replica of the scoring model (the critic
snapshot for verifiable, the frozen reference for Rho-1) and running the SAME scoring function as
the colocated path (`wmtp.recipes.experience.score_batch`).

Why a pool per rank rather than one shared pool: Ray runs one caller's calls to an actor in
submission order, so a rank's `publish_critic` always lands before the batches it submits next.
With a shared pool, rank 1's batch could be scored before rank 0's publish arrives, and the critic
version (hence the numbers) would depend on timing. Per-rank pools keep the async placement
deterministic: with `critic_sync_interval=1` and `queue_depth=0` it equals `colocated` exactly.

    submit(batch)        round-robin to the pool; at most queue_depth + 1 batches in flight
    get()                the oldest result (data order); rescored with the newest critic when it
                         lags the learner by more than `stage2.max_staleness` versions
    publish_critic(m,v)  one publisher for all ranks: rank 0 gathers the model one tensor at a time
                         into host memory in the compute dtype (the other ranks only take part in
                         the gathers), `ray.put`s it ONCE and hands the reference to the other
                         ranks through a tiny board actor; every pool loads that one object, which
                         each node's object store fetches once (`publish_bytes` in
                         wmtp.parallel.weight_sync counts it)
    in_flight()          the batches in flight with their scores, for the learner's checkpoint;
    resume_in_flight(s)  a resumed run queues them again as scored (no rescoring with a newer critic)
Actor failures (process killed, node lost): actors restart (`max_restarts`); a call that failed is
retried after the actor reloads the last published weights — the learner never sees the failure.
"""
# One module (over 300 lines): the async scorer's actors, pool, retries and weight board are one protocol.

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
import torch
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from torch import Tensor

from wmtp.config.schema import WMTPConfig
from wmtp.orchestration.resources import EXPERIENCE_ACTOR_CPUS, EXPERIENCE_RESOURCE, run_resources
from wmtp.recipes.interfaces import SCORED_FIELDS, ScoredBatch

if TYPE_CHECKING:
    from wmtp.model.transformer import Transformer
    from wmtp.model.value import ValueModel

ACTOR_MAX_RESTARTS = 3
# How long the learner waits for its experience actors to be scheduled before saying why not.
ACTOR_START_TIMEOUT_S = 180.0
# How long a failed call waits for its restarted actor before the learner gives up.
ACTOR_RECOVERY_TIMEOUT_S = 120.0


def experience_actor_resources(cfg: WMTPConfig) -> tuple[int, dict[str, float]]:
    """How many experience actors `placement: async` creates, and the Ray resources each asks for
    (`num_cpus`, `num_gpus`, and `resources` on dedicated nodes): read from
    `wmtp.orchestration.resources.run_resources`, the one statement the launcher, the dry run and
    the scorer share. `colocated` creates none."""
    need = run_resources(cfg)
    options: dict = {"num_cpus": need.cpus_per_actor, "num_gpus": need.gpus_per_actor}
    if need.dedicated_actor_nodes:
        options["resources"] = {EXPERIENCE_RESOURCE: 1.0}
    return need.experience_actors, options


def actor_placement(options: dict, learner_node_id: str) -> dict:
    """Ray options that place one experience actor: on dedicated nodes, wherever the custom
    resource is (`options["resources"]`); else on its learner's node (hard affinity: the actor
    never lands on another node, where its batches would cross the network)."""
    if "resources" in options:
        return dict(options)
    return {**options, "scheduling_strategy": NodeAffinitySchedulingStrategy(learner_node_id, soft=False)}


def async_fit_problem(cfg: WMTPConfig, cluster_gpus: float) -> str | None:
    """Why `placement: async` cannot fit on a cluster with `cluster_gpus` GPUs in all (None when
    it fits): learners take one GPU each, experience actors `experience_actor_resources` each."""
    orch = cfg.orchestration
    count, options = experience_actor_resources(cfg)
    need = orch.num_workers * (1 if orch.use_gpu else 0) + count * options["num_gpus"]
    if need <= cluster_gpus:
        return None
    spare = int(cluster_gpus) - orch.num_workers
    fewer = int(cluster_gpus) // (1 + orch.num_experience_actors)
    # Fewer learners hold bigger shards each: name the memory check (at 7B on 80 GB, 2 do not fit).
    hint = (f"orchestration.num_experience_actors={spare // orch.num_workers}" if spare >= orch.num_workers
            else f"orchestration.num_workers={fewer} if the plan fits {fewer} learner(s) per GPU memory "
                 "(check with --dry-run --cluster FILE)" if fewer >= 1 else None)
    return (f"orchestration.placement=async needs {need:g} GPUs ({orch.num_workers} learners + {count} experience "
            f"actors, one GPU each: num_workers x num_experience_actors = {orch.num_workers} x "
            f"{orch.num_experience_actors}) but the cluster has {cluster_gpus:g}. Use orchestration.placement="
            f"colocated (scores with the learner's own sharded critic, no extra GPU)"
            + (f", or {hint}" if hint else "") + ", or add a node with the missing GPUs.")


class WeightBoard:
    """One per run (a tiny named actor): rank 0 pins the reference of the newest published weights
    here and the other ranks read it, so the weights travel through the object store once, not
    once per rank. The reference is wrapped in a list so Ray passes it on, not its value."""

    def __init__(self) -> None:
        self.refs: list[Any] = []

    def set(self, refs: list[Any]) -> None:
        self.refs = refs

    def get(self) -> list[Any]:
        return self.refs


class ExperienceActor:
    """One replica of the scoring model (wrapped by `ray.remote` in `AsyncExperienceScorer`)."""

    def __init__(self, spec: Any, device: str) -> None:
        self.spec, self.device = spec, torch.device(device)
        self.model: Transformer | ValueModel | None = None
        self.version = -1

    def load(self, state_dict: Mapping[str, Tensor], version: int) -> int:
        from wmtp.recipes.experience import build_scoring_model

        if self.model is None:
            self.model = build_scoring_model(self.spec, state_dict, self.device)
        else:
            self.model.load_state_dict(state_dict)
        self.version = version
        return version

    def score(self, batch: Any) -> dict[str, Any]:
        """The scored fields of `batch` (CPU tensors) and the critic version that produced them."""
        from wmtp.recipes.experience import score_batch

        if self.model is None:
            # A restarted actor (or one created before any publish): the scorer reloads and retries.
            return {"needs_weights": True}
        scored = score_batch(self.spec, self.model, batch.to(self.device), self.version)
        out: dict[str, Any] = {f: _to_cpu(getattr(scored, f)) for f in SCORED_FIELDS}
        out["critic_version"] = scored.critic_version
        out["stats"] = dict(scored.stats)
        return out

    def pid(self) -> int:
        import os

        return os.getpid()


@dataclass
class _Pending:
    batch: Any  # the learner's batch, on its device (kept here: only a CPU copy travels)
    actor_index: int
    ref: ray.ObjectRef | None
    submitted_version: int
    result: dict[str, Any] | None = None  # once fetched (`in_flight`), or restored from a checkpoint


class AsyncExperienceScorer:
    """`ExperienceScorer` over a pool of experience actors (module docstring)."""

    def __init__(
        self,
        spec: Any,
        state_dict: Mapping[str, Tensor] | None,
        *,
        name_prefix: str,
        num_actors: int,
        queue_depth: int,
        max_staleness: int,
        actor_options: Mapping[str, Any] | None = None,
        on_stats: Callable[[Mapping[str, float]], None] | None = None,
        board_name: str | None = None,
    ) -> None:
        self._spec = spec
        # Each actor's Ray resources, as `experience_actor_resources(cfg)` states them (the plan,
        # the fit check and the actors use the one statement); default one CPU.
        self._options = dict(actor_options or {"num_cpus": EXPERIENCE_ACTOR_CPUS, "num_gpus": 0})
        self._use_gpu = bool(self._options.get("num_gpus"))
        self._board_name = board_name
        self._names = [f"{name_prefix}-{i}" for i in range(num_actors)]
        self._queue_depth, self._max_staleness = queue_depth, max_staleness
        self._on_stats = on_stats
        self._pending: deque[_Pending] = deque()
        self._next_actor = 0
        self._version = 0
        self._weights_ref: ray.ObjectRef | None = None
        self._board: Any = None  # the run's WeightBoard (multi-rank publishes), once the first publish made it
        self.rescored = 0
        self.recovered = 0
        self._actors = [self._create_actor(name) for name in self._names]
        self._wait_until_scheduled()
        if state_dict is not None:
            self.publish_critic(state_dict, 0)

    # ----------------------------------------------------------------------------------- actors
    def _create_actor(self, name: str) -> Any:
        return _remote_actor_class().options(
            name=name,
            max_restarts=ACTOR_MAX_RESTARTS,
            max_task_retries=0,  # the scorer retries itself, after reloading the weights
            **actor_placement(self._options, ray.get_runtime_context().get_node_id()),
        ).remote(self._spec, "cuda" if self._use_gpu else "cpu")

    def _wait_until_scheduled(self) -> None:
        """Fail with the reason, not a silent hang, when the cluster cannot place the actors."""
        pending = [actor.pid.remote() for actor in self._actors]
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=ACTOR_START_TIMEOUT_S)
        failed = 0  # a hard node affinity that cannot hold the actor fails its creation at once
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                failed += 1
        if failed or len(ready) < len(pending):
            dedicated = "resources" in self._options
            need = {"CPU": self._options.get("num_cpus", 0), **({"GPU": self._options["num_gpus"]} if self._use_gpu else {}),
                    **self._options.get("resources", {})}
            where = (f"a node with the custom resource {EXPERIENCE_RESOURCE} (orchestration.experience_nodes="
                     "dedicated)" if dedicated else "the learner's own node")
            for actor in self._actors:  # do not leave pending actors holding their names
                ray.kill(actor, no_restart=True)
            raise RuntimeError(
                f"{len(pending) - len(ready) + failed} of {len(pending)} experience actors ({self._names[0]}...) were not "
                f"scheduled within {ACTOR_START_TIMEOUT_S:.0f}s: each needs {need} on {where}, the cluster has "
                f"{ray.available_resources()} free. Lower orchestration.num_experience_actors or "
                f"num_workers, add nodes, or use orchestration.placement=colocated.")

    def _recover(self, index: int) -> None:
        """Reload the last published weights on actor `index` (restarted, or re-created if gone)."""
        deadline = time.monotonic() + ACTOR_RECOVERY_TIMEOUT_S
        failures = 0
        while True:
            try:
                if self._weights_ref is not None:
                    ray.get(self._actors[index].load.remote(self._weights_ref, self._version))
                else:
                    ray.get(self._actors[index].pid.remote())
                self.recovered += 1
                return
            except RayActorError:
                failures += 1
                if time.monotonic() > deadline:
                    raise
                if failures > ACTOR_MAX_RESTARTS:
                    # Out of restarts (dead for good): a new actor under the same name, once the
                    # dead one has released it.
                    try:
                        self._actors[index] = self._create_actor(self._names[index])
                    except ValueError:
                        pass
                time.sleep(0.2)

    def actor_handles(self) -> list[Any]:
        return list(self._actors)

    # ---------------------------------------------------------------------------- the protocol
    def submit(self, batch: Any) -> None:
        if len(self._pending) > self._queue_depth:
            raise RuntimeError(
                f"experience queue full: {len(self._pending)} batches in flight, queue_depth="
                f"{self._queue_depth} allows {self._queue_depth + 1}; call get() before submitting more"
            )
        index = self._next_actor
        self._next_actor = (index + 1) % len(self._actors)
        ref = self._actors[index].score.remote(batch.to("cpu"))
        self._pending.append(_Pending(batch, index, ref, self._version))

    def get(self) -> ScoredBatch:
        if not self._pending:
            raise RuntimeError("get() without a submitted batch")
        item = self._pending.popleft()
        result = item.result if item.result is not None else self._result(item)
        staleness = self._version - result["critic_version"]
        if staleness > self._max_staleness:
            # Too old: score again with the newest critic (the actor has it: publishes precede).
            self.rescored += 1
            result = self._result(_Pending(item.batch, item.actor_index,
                                           self._actors[item.actor_index].score.remote(item.batch.to("cpu")),
                                           self._version))
            staleness = self._version - result["critic_version"]
        device = _device_of(item.batch)
        scored = ScoredBatch(
            item.batch,
            **{f: (None if result[f] is None else result[f].to(device)) for f in SCORED_FIELDS},
            critic_version=result["critic_version"],
            stats={**result["stats"], "critic_staleness": float(staleness),
                   "experience_queue_depth": float(len(self._pending))},
        )
        if self._on_stats is not None:
            self._on_stats(scored.stats)
        return scored

    def in_flight(self) -> list[ScoredBatch]:
        """The batches in flight as their actors scored them (waits for the results), oldest
        first, for a checkpoint; `get` still returns them (and rescores one that is too stale
        then, as it would have)."""
        out = []
        for item in self._pending:
            if item.result is None:
                item.result = self._result(item)
            out.append(ScoredBatch(item.batch, **{f: item.result[f] for f in SCORED_FIELDS},
                                   critic_version=item.result["critic_version"], stats=dict(item.result["stats"])))
        return out

    def resume_in_flight(self, scored: ScoredBatch) -> None:
        """Queue a batch scored before a checkpoint with its saved scores (no actor call)."""
        index = self._next_actor
        self._next_actor = (index + 1) % len(self._actors)
        result: dict[str, Any] = {f: _to_cpu(getattr(scored, f)) for f in SCORED_FIELDS}
        result.update(critic_version=scored.critic_version, stats=dict(scored.stats))
        self._pending.append(_Pending(scored.batch, index, None, scored.critic_version, result))

    def _result(self, item: _Pending) -> dict[str, Any]:
        try:
            result = ray.get(item.ref)
            if not result.get("needs_weights"):
                return result
            if self._weights_ref is None:
                raise RuntimeError("experience actors have no weights: pass a state dict or publish_critic first")
            # Restarted before this call and not resynced yet: same path as a failed call.
            raise _ActorLostWeights()
        except (RayActorError, _ActorLostWeights):
            # The actor died while (or before) scoring: bring it back with the last published
            # weights and score the batch again. Later pending calls to it fail the same way and
            # take this path in turn.
            self._recover(item.actor_index)
            retry = self._actors[item.actor_index].score.remote(item.batch.to("cpu"))
            return self._result(_Pending(item.batch, item.actor_index, retry, item.submitted_version))

    def publish_critic(self, source: torch.nn.Module | Mapping[str, Tensor], version: int) -> None:
        """Every rank calls it (FSDP gathers are collectives). One publisher: rank 0 keeps the
        gathered tensors (host, compute dtype) and puts them once; its reference reaches the
        other ranks through the run's `WeightBoard`."""
        from wmtp.parallel.gather import gather_state_dict
        from wmtp.training.precision import compute_dtype

        dist = _process_group()
        publisher = dist is None or dist.get_rank() == 0
        state = gather_state_dict(source, dtype=compute_dtype(getattr(self._spec, "precision", "fp32")),
                                  keep=publisher)
        ref = ray.put(state) if publisher else None
        if dist is not None:
            ref = self._share(ref, dist)
        self._weights_ref = ref
        self._version = version
        for actor in self._actors:
            actor.load.remote(self._weights_ref, version)

    def _share(self, ref: ray.ObjectRef | None, dist) -> ray.ObjectRef:
        """Rank 0's reference on every rank: set on the board, barrier, read, barrier (so the next
        publish cannot overwrite it before every rank has read it)."""
        if self._board is None:
            # One handle for the run, kept: a named actor lives while a handle to it does, so a
            # handle taken per publish let Ray end the board after each publish and start a new
            # worker process for the next (0.8 s a publish on an idle Ray, 2-3 s beside training
            # on 2 cores).
            self._board = _remote_board_class().options(name=self._board_name or "wmtp-weights",
                                                        get_if_exists=True, num_cpus=0).remote()
        board = self._board
        if ref is not None:
            ray.get(board.set.remote([ref]))
        dist.barrier()
        (ref,) = ray.get(board.get.remote())
        dist.barrier()
        return ref

    def close(self) -> None:
        self._pending.clear()
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        self._board = None
        dist = _process_group()
        if dist is not None and dist.get_rank() == 0:
            try:
                ray.kill(ray.get_actor(self._board_name or "wmtp-weights"), no_restart=True)
            except ValueError:
                pass


def async_scorer_factory(cfg: WMTPConfig, *, run: str, rank: int,
                         on_stats: Callable[[Mapping[str, float]], None] | None = None):
    """The `scorer_factory(spec, state_dict)` a recipe gets under `orchestration.placement=async`."""
    orch = cfg.orchestration

    def factory(spec: Any, state_dict: Mapping[str, Tensor] | None) -> AsyncExperienceScorer:
        if orch.use_gpu and (problem := async_fit_problem(cfg, ray.cluster_resources().get("GPU", 0))):
            raise RuntimeError(problem)  # at once, not after the scheduling timeout
        return AsyncExperienceScorer(
            spec,
            state_dict,
            name_prefix=f"wmtp-experience-{run}-r{rank}",
            num_actors=orch.num_experience_actors,
            queue_depth=orch.queue_depth,
            max_staleness=cfg.stage2.max_staleness,
            actor_options=experience_actor_resources(cfg)[1],
            on_stats=on_stats,
            board_name=f"wmtp-weights-{run}",
        )

    return factory


class _ActorLostWeights(Exception):
    """An experience actor answered without weights (it restarted since the last publish)."""


def _device_of(batch: Any) -> torch.device:
    return batch.tokens.device


def _to_cpu(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().cpu()


def _process_group():
    """`torch.distributed` when this scorer runs in a multi-rank group, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


@functools.cache
def _remote_board_class() -> Any:
    return ray.remote(WeightBoard)


@functools.cache
def _remote_actor_class() -> Any:
    """`ray.remote(ExperienceActor)`, made once per process (not once per actor or restart)."""
    return ray.remote(ExperienceActor)

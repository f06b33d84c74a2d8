"""Weight-sync cost: the bytes a publish moves (critic → whatever scores experience), per rank
and in total, per publish and per optimizer step. Pure arithmetic on the config and a parameter
count; the dry-run prints it, and tests compare it with what the micro model really moves.

Mechanisms (what `wmtp.recipes.verifiable` / `wmtp.orchestration.experience` do):
  in place        colocated, critic_sync_interval 1 or a frozen critic: the learner's own critic
                  scores; nothing moves.
  snapshot copy   colocated, interval k > 1: each rank copies its local critic shards into the
                  sharded compute-dtype snapshot (device memory copy, no network), every k steps.
  one publisher   async: the ranks all-gather the critic one tensor at a time in the compute dtype
                  (each rank receives (W−1)/W of it; FSDP only), rank 0 keeps it in host memory and
                  puts it in the object store ONCE; every node with experience actors fetches it
                  once (the node of rank 0 reads it from shared memory).
  reference once  Rho-1 with a live reference under async: the frozen reference is published at
                  start, never again (colocated: sharded in place, nothing moves).
"""

from __future__ import annotations

from dataclasses import dataclass

from wmtp.checkpoint.dcp import shard_numel
from wmtp.config.schema import WMTPConfig
from wmtp.model.memory import COMPUTE_BYTES


@dataclass(frozen=True)
class WeightSync:
    mechanism: str
    publishes_per_step: float
    bytes_per_publish_per_rank: int  # the busiest rank (rank 0 under async): copied, received, put
    bytes_per_publish_total: int  # all ranks and nodes together
    object_store_bytes_per_publish: int  # bytes `ray.put` once per publish (async), else 0

    @property
    def bytes_per_step_per_rank(self) -> float:
        return self.bytes_per_publish_per_rank * self.publishes_per_step

    @property
    def bytes_per_step_total(self) -> float:
        return self.bytes_per_publish_total * self.publishes_per_step

    def as_dict(self) -> dict[str, float | str]:
        gib = 1024 ** 3
        return {"mechanism": self.mechanism, "publishes_per_step": self.publishes_per_step,
                "per_publish_per_rank_gib": self.bytes_per_publish_per_rank / gib,
                "per_publish_total_gib": self.bytes_per_publish_total / gib,
                "per_step_per_rank_gib": self.bytes_per_step_per_rank / gib,
                "per_step_total_gib": self.bytes_per_step_total / gib,
                "object_store_per_publish_gib": self.object_store_bytes_per_publish / gib}


def weight_sync_cost(cfg: WMTPConfig, n_params: int, *, nodes: int = 1) -> WeightSync:
    """Cost of publishing a model of `n_params` parameters (the critic; Rho-1: the reference) to
    the experience side under `cfg`, on `nodes` nodes holding experience actors."""
    orch, stage2 = cfg.orchestration, cfg.stage2
    world = orch.num_workers if orch.enabled else 1
    nbytes = n_params * COMPUTE_BYTES[cfg.train.precision]
    sharded = orch.fsdp and world > 1
    # HSDP: shards (and so a gather, and a snapshot's shard) span one group of world / replicas ranks.
    group = world // orch.fsdp_replicas if sharded else world
    asynchronous = orch.enabled and orch.placement == "async"
    if cfg.recipe == "rho1_weighted" and not cfg.data.reference_losses:
        if not asynchronous:
            return WeightSync("reference sharded in place (nothing moves)", 0.0, 0, 0, 0)
        return _one_publisher("reference published once at start", 0.0, nbytes, world, sharded, nodes, group)
    if cfg.recipe != "verifiable":
        return WeightSync("none (no experience phase)", 0.0, 0, 0, 0)
    interval = stage2.critic_sync_interval
    if not stage2.value_loss.enabled:
        if asynchronous:
            return _one_publisher("frozen critic published once at start", 0.0, nbytes, world, sharded, nodes, group)
        return WeightSync("in place (frozen critic scores as it is)", 0.0, 0, 0, 0)
    if asynchronous:
        return _one_publisher("one publisher (rank 0 → object store once)", 1 / interval, nbytes, world, sharded, nodes, group)
    if interval == 1:
        return WeightSync("in place (the learner's critic scores)", 1.0, 0, 0, 0)
    per_rank = shard_numel(n_params, group) * COMPUTE_BYTES[cfg.train.precision] if sharded else nbytes
    return WeightSync("snapshot copy from local shards (device copy, no network)", 1 / interval, per_rank,
                      per_rank * world, 0)


def _one_publisher(mechanism: str, per_step: float, nbytes: int, world: int, sharded: bool,
                   nodes: int, group: int) -> WeightSync:
    received = nbytes * (group - 1) // group if sharded else 0  # all-gather within a shard group, compute dtype
    per_rank = received + nbytes  # rank 0: its gather share, then the one put
    total = received * world + nbytes + (nodes - 1) * nbytes
    return WeightSync(mechanism, per_step, per_rank, total, nbytes)


__all__ = ["WeightSync", "weight_sync_cost"]

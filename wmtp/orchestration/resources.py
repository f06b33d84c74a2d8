"""The Ray resources a run reserves, computed once for the launcher, `wmtp tune` and `--dry-run`.

    run_resources(cfg) -> RunResources      workers, experience actors, CPU/GPU totals
    check_fits(need, cluster_resources)     a clear error before anything is scheduled

A run reserves `orchestration.num_workers` Ray Train workers (`cpus_per_worker` CPUs each, one GPU
each with `use_gpu`) and, under `placement=async` for the recipes that score experience
(verifiable, rho1_weighted), `num_experience_actors` actors PER learner rank (each rank owns its
pool: wmtp/orchestration/experience.py). The Train controller and a Tune trial's driver reserve
(almost) nothing. Ray-free: the dry run imports it without starting Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from wmtp.config.schema import WMTPConfig
from wmtp.errors import WMTPUserError

# Recipes whose learner asks the experience side to score batches (they take a scorer_factory).
SCORING_RECIPES = ("verifiable", "rho1_weighted")

# Each experience actor runs one scoring forward at a time.
EXPERIENCE_ACTOR_CPUS = 1.0

# `orchestration.experience_nodes: dedicated`: nodes that host experience actors advertise this
# custom resource (`ray start ... --resources='{"wmtp_experience": N}'`), one unit per actor.
EXPERIENCE_RESOURCE = "wmtp_experience"

# A Tune trial's function only drives its TorchTrainer; Tune refuses an empty request.
TRIAL_DRIVER_CPUS = 0.01


class UnschedulableError(WMTPUserError, RuntimeError):
    """The cluster can never hold the run (user error: exit 2, no traceback)."""


@dataclass(frozen=True)
class RunResources:
    workers: int
    cpus_per_worker: float
    gpus_per_worker: int
    experience_actors: int  # all ranks together
    cpus_per_actor: float
    gpus_per_actor: int
    dedicated_actor_nodes: bool = False  # actors need EXPERIENCE_RESOURCE (one unit each)

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker + self.experience_actors * self.cpus_per_actor

    @property
    def gpus(self) -> int:
        return self.workers * self.gpus_per_worker + self.experience_actors * self.gpus_per_actor

    def bundle(self) -> dict[str, float]:
        """The whole run as one resource dict (`{"CPU": 4.0}`; GPU only when used)."""
        out = {"CPU": self.cpus}
        if self.gpus:
            out["GPU"] = float(self.gpus)
        if self.dedicated_actor_nodes and self.experience_actors:
            out[EXPERIENCE_RESOURCE] = float(self.experience_actors)
        return out

    def explain(self) -> str:
        """`2 workers × 1 CPU + 2 experience actors × 1 CPU = 4 CPU` (and the GPU line)."""
        def term(n: int, what: str, each: float, unit: str) -> str:
            return f"{n} {what}{'s' if n != 1 else ''} × {each:g} {unit}"

        cpu = [term(self.workers, "worker", self.cpus_per_worker, "CPU")]
        gpu = [term(self.workers, "worker", self.gpus_per_worker, "GPU")] if self.gpus_per_worker else []
        if self.experience_actors:
            cpu.append(term(self.experience_actors, "experience actor", self.cpus_per_actor, "CPU"))
            if self.gpus_per_actor:
                gpu.append(term(self.experience_actors, "experience actor", self.gpus_per_actor, "GPU"))
        text = f"{' + '.join(cpu)} = {self.cpus:g} CPU"
        if gpu:
            text += f"; {' + '.join(gpu)} = {self.gpus} GPU"
        if self.dedicated_actor_nodes and self.experience_actors:
            text += f"; the experience actors on nodes with {self.experience_actors} {EXPERIENCE_RESOURCE}"
        return text


def experience_actors_per_rank(cfg: WMTPConfig) -> int:
    orch = cfg.orchestration
    return orch.num_experience_actors if orch.placement == "async" and cfg.recipe in SCORING_RECIPES else 0


def run_resources(cfg: WMTPConfig) -> RunResources:
    """What `cfg` reserves on Ray (the launcher's ScalingConfig and actor options use the same numbers)."""
    orch = cfg.orchestration
    gpu = 1 if orch.use_gpu else 0
    return RunResources(
        workers=orch.num_workers,
        cpus_per_worker=orch.cpus_per_worker,
        gpus_per_worker=gpu,
        experience_actors=orch.num_workers * experience_actors_per_rank(cfg),
        cpus_per_actor=EXPERIENCE_ACTOR_CPUS,
        gpus_per_actor=gpu,
        dedicated_actor_nodes=orch.experience_nodes == "dedicated",
    )


def ray_start_flags(need: Mapping[str, float]) -> str:
    """`--num-cpus=4 --num-gpus=0`: the smallest `ray start --head` that holds `need` (on one node;
    with dedicated experience nodes, their custom resource too)."""
    flags = f"--num-cpus={math.ceil(need.get('CPU', 0))} --num-gpus={math.ceil(need.get('GPU', 0))}"
    if need.get(EXPERIENCE_RESOURCE):
        flags += f" --resources='{{\"{EXPERIENCE_RESOURCE}\": {math.ceil(need[EXPERIENCE_RESOURCE])}}}'"
    return flags


def check_fits(need: RunResources, cluster: Mapping[str, float], *, what: str = "this run",
               copies: int = 1, extra_cpus: float = 0.0) -> None:
    """Raise `UnschedulableError` naming what is missing when `cluster` (ray.cluster_resources())
    cannot hold `copies` of `need` at once (Tune: concurrent trials) — before Ray waits forever.

    Totals, not free resources: a busy cluster makes the run wait (Ray's normal queueing); only a
    cluster that can never hold it is refused.
    """
    want = {key: value * copies for key, value in need.bundle().items()}
    want["CPU"] += extra_cpus * copies
    missing = {key: value for key, value in want.items() if cluster.get(key, 0.0) + 1e-9 < value}
    if not missing:
        return
    has = ", ".join(f"{cluster.get(key, 0):g} {key}" for key in want)
    per = f"{copies} × ({need.explain()})" if copies > 1 else need.explain()
    raise UnschedulableError(
        f"{what} cannot be placed: it needs {per}, the cluster has {has} in total "
        f"(missing: {', '.join(f'{v - cluster.get(k, 0):g} {k}' for k, v in missing.items())}). "
        f"Start the head with `ray start --head {ray_start_flags(want)}`, add nodes, or lower "
        "orchestration.num_workers / num_experience_actors (or orchestration.placement=colocated).")

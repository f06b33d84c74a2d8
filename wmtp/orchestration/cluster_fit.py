"""What a cluster file says its nodes have, and the dry run's check of a plan against it
(`wmtp train ... --dry-run --cluster cluster/a100x4.yaml`).

    read_cluster_file(path) -> ClusterNodes     a Ray launcher YAML or a KubeRay RayJob
    check_plan(plan, cfg, nodes) -> problems    each naming the fix; any one refuses (exit 2)

What is checked, by the same figures the plan prints:
- GPUs: the run's workers and experience actors (`ray resources`) against the file's GPUs;
- memory per GPU: the formula's total (`estimated memory per GPU`) plus the CUDA context and
  allocator budget against the accelerator's memory;
- `wmtp_experience`: dedicated experience nodes need that custom resource, one unit per actor;
- checkpoint disk: `disk_per_node_gib` of the checkpoint plan against the node's boot disk.
Ray-free (the dry run starts no Ray).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wmtp.config.schema import WMTPConfig
from wmtp.errors import WMTPUserError
from wmtp.orchestration.resources import EXPERIENCE_RESOURCE

# Accelerator memory (GiB) by the names cluster files use: GCP acceleratorType, GKE node label.
ACCELERATOR_GIB = {
    "nvidia-a100-80gb": 80.0, "nvidia-tesla-a100": 40.0, "nvidia-h100-80gb": 80.0,
    "nvidia-h100-mega-80gb": 80.0, "nvidia-h200-141gb": 141.0, "nvidia-l4": 24.0, "nvidia-tesla-v100": 16.0,
}
# The CUDA context, NCCL buffers and allocator slack the formula leaves out (docs/MEMORY.md).
RUNTIME_BUDGET_GIB = 3.0
GB = 1e9
GIB = 1024**3


class ClusterFitError(WMTPUserError, ValueError):
    """The plan does not fit the cluster file's nodes (exit 2, every problem with its fix)."""


@dataclass(frozen=True)
class NodeGroup:
    name: str
    count: int
    gpus: int
    gpu_gib: float | None
    disk_gib: float | None
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterNodes:
    path: str
    groups: list[NodeGroup]

    @property
    def gpus(self) -> int:
        return sum(g.count * g.gpus for g in self.groups)

    def resource(self, name: str) -> float:
        return sum(g.count * g.resources.get(name, 0.0) for g in self.groups)

    def describe(self) -> str:
        parts = []
        for g in self.groups:
            mem = f" × {g.gpu_gib:g} GiB" if g.gpu_gib else ""
            disk = f", {g.disk_gib:.0f} GiB disk" if g.disk_gib else ""
            extra = "".join(f", {k}={v:g}" for k, v in g.resources.items())
            parts.append(f"{g.count} × {g.name} ({g.gpus} GPU{mem}{disk}{extra})")
        return f"{self.path}: " + "; ".join(parts)


def read_cluster_file(path: str | Path) -> ClusterNodes:
    """The node groups of a Ray launcher YAML (`available_node_types`) or a KubeRay RayJob."""
    path = Path(path)
    if not path.is_file():
        raise ClusterFitError(f"--cluster: {str(path)!r} does not exist")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except yaml.YAMLError as e:
        raise ClusterFitError(f"--cluster: {path} is not valid YAML: {e}") from None
    for doc in docs:
        if "available_node_types" in doc:
            return ClusterNodes(str(path), _launcher_groups(doc))
        if doc.get("kind") in ("RayJob", "RayCluster"):
            spec = doc["spec"].get("rayClusterSpec", doc["spec"])
            return ClusterNodes(str(path), _kuberay_groups(spec))
    raise ClusterFitError(f"--cluster: {path} is neither a Ray cluster launcher YAML (available_node_types) "
                          "nor a KubeRay RayJob/RayCluster")


def _launcher_groups(doc: dict[str, Any]) -> list[NodeGroup]:
    groups = []
    for name, node in doc["available_node_types"].items():
        count = node.get("max_workers", 0) + (1 if name == doc.get("head_node_type") else 0)
        cfg = node.get("node_config", {})
        resources = dict(node.get("resources") or {})
        accel = (cfg.get("guestAccelerators") or [{}])[0]
        gpus = int(resources.pop("GPU", accel.get("acceleratorCount", 0)))
        resources.pop("CPU", None)
        boot: dict[str, Any] = next((d for d in cfg.get("disks", []) if d.get("boot")), {})
        size = boot.get("initializeParams", {}).get("diskSizeGb")
        if size is None:  # AWS: BlockDeviceMappings[].Ebs.VolumeSize (GiB)
            ebs = [m.get("Ebs", {}) for m in cfg.get("BlockDeviceMappings", [])]
            size_gib = next((e["VolumeSize"] for e in ebs if "VolumeSize" in e), None)
        else:
            size_gib = size * GB / GIB
        groups.append(NodeGroup(name, count, gpus, ACCELERATOR_GIB.get(accel.get("acceleratorType", "")),
                                size_gib, {k: float(v) for k, v in resources.items()}))
    return [g for g in groups if g.count]


def _kuberay_groups(spec: dict[str, Any]) -> list[NodeGroup]:
    def group(name: str, count: int, template: dict[str, Any], params: dict[str, Any]) -> NodeGroup:
        pod = template.get("spec", {})
        limits = pod.get("containers", [{}])[0].get("resources", {}).get("limits", {})
        gpus = int(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        label = (pod.get("nodeSelector") or {}).get("cloud.google.com/gke-accelerator", "")
        resources = yaml.safe_load(params["resources"]) if "resources" in params else {}
        # Pods state no disk of their own (ephemeral storage is the node's): not checked.
        return NodeGroup(name, count, gpus, ACCELERATOR_GIB.get(label) if gpus else None, None,
                         {k: float(v) for k, v in (resources or {}).items()})

    head = spec["headGroupSpec"]
    groups = [group("head", 1, head.get("template", {}), head.get("rayStartParams", {}))]
    for w in spec.get("workerGroupSpecs", []):
        groups.append(group(w.get("groupName", "workers"), int(w.get("replicas", 1)), w.get("template", {}),
                            w.get("rayStartParams", {})))
    return groups


def check_plan(plan: Any, cfg: WMTPConfig, nodes: ClusterNodes) -> list[str]:
    """Every way the dry-run `plan` (wmtp.cli.Plan) does not fit `nodes`, each naming a fix."""
    orch = cfg.orchestration
    problems: list[str] = []
    need = plan.resources
    if not orch.enabled or not orch.use_gpu:
        return problems
    if need["total_gpus"] > nodes.gpus:
        problems.append(
            f"GPUs: the run needs {need['needs']}, {nodes.path} has {nodes.gpus} GPU. Fix: "
            + ("orchestration.placement=colocated (the critic scores on the learner's GPUs), or a cluster file "
               "with a node for the experience actors" if need["experience_actors"] else
               f"orchestration.num_workers={nodes.gpus} or more GPU nodes"))
    gpu_gib = min((g.gpu_gib for g in nodes.groups if g.gpus and g.gpu_gib), default=None)
    total = plan.memory_gib.get("total", 0.0)
    if gpu_gib is not None and total + RUNTIME_BUDGET_GIB > gpu_gib:
        shard = orch.num_workers // orch.fsdp_replicas
        fixes = [f"shard over more GPUs (orchestration.num_workers > {shard})"]
        if orch.placement == "async" and cfg.recipe in ("verifiable", "rho1_weighted"):
            fixes.insert(0, "orchestration.placement=colocated (at 7B on 4×A100-80GB only colocated fits)")
        if not cfg.train.activation_checkpointing:
            fixes.append("train.activation_checkpointing=true")
        fixes += ["a smaller data.batch_size", "the 1B preset (--preset a100x4-1b)"]
        problems.append(
            f"memory per GPU: the plan needs {total:.1f} GiB per GPU by the formula (+ {RUNTIME_BUDGET_GIB:g} GiB "
            f"CUDA context and allocator), the GPUs of {nodes.path} have {gpu_gib:g} GiB. Fix: " + ", or ".join(fixes))
    wanted = need["experience_actors"] if orch.experience_nodes == "dedicated" else 0
    if wanted and nodes.resource(EXPERIENCE_RESOURCE) < wanted:
        problems.append(
            f"{EXPERIENCE_RESOURCE}: orchestration.experience_nodes=dedicated needs {wanted} {EXPERIENCE_RESOURCE} "
            f"(one per experience actor), {nodes.path} defines {nodes.resource(EXPERIENCE_RESOURCE):g}. Fix: add "
            f"`resources: {{\"{EXPERIENCE_RESOURCE}\": {wanted}, \"GPU\": ...}}` to a node type of the file, or "
            "orchestration.experience_nodes=learner")
    disk_need = plan.checkpoint_io.get("disk_per_node_gib")
    disks = [g.disk_gib for g in nodes.groups if g.disk_gib]
    if isinstance(disk_need, float) and disks and disk_need > min(disks):
        problems.append(
            f"checkpoint disk: a node needs {disk_need:.0f} GiB for checkpoints ({plan.checkpoint_io['storage']}), "
            f"the nodes of {nodes.path} have {min(disks):.0f} GiB of disk. Fix: orchestration.storage_path=s3://... "
            f"(a node then keeps the staging copy and one download), orchestration.keep_checkpoints="
            f"{max(orch.keep_checkpoints - 1, 1)}, or a boot disk of at least {disk_need * GIB / GB * 1.1:.0f} GB")
    return problems


def require_fit(plan: Any, cfg: WMTPConfig, path: str | Path) -> str:
    """The dry run's `--cluster` check: a summary line when the plan fits, else `ClusterFitError`."""
    nodes = read_cluster_file(path)
    problems = check_plan(plan, cfg, nodes)
    if problems:
        raise ClusterFitError(f"the plan does not fit {nodes.describe()}:\n" + "\n".join(f"  - {p}" for p in problems))
    return f"# cluster check: fits {nodes.describe()}"


__all__ = ["ClusterFitError", "ClusterNodes", "check_plan", "read_cluster_file", "require_fit"]

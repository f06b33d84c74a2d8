"""Publish and export one tensor at a time: on 2 gloo ranks with FSDP2, `gather_state_dict` and
`export_model` give exactly the unsharded model's weights (rank 0 keeps them, rank 1 only takes
part), cast to the compute dtype when asked; the snapshot refresh copies local shards only, the
bytes `wmtp.parallel.weight_sync` states."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.distributed import run_distributed
from wmtp.model.args import PRESETS
from wmtp.model.value import build_value_model, value_args_from_policy
from wmtp.parallel.gather import gather_state_dict, iter_full_tensors, state_dict_bytes

pytestmark = pytest.mark.distributed


def _critic():
    return build_value_model(value_args_from_policy(PRESETS["tiny"]), "linear", seed=3)


def _rank(rank: int, world_size: int, out: str) -> dict:
    from tests.recipes.harness import recipe_config
    from wmtp.parallel.export import export_model
    from wmtp.parallel.fsdp import apply_fsdp
    from wmtp.parallel.reduce import DistEnv
    from wmtp.parallel.weight_sync import weight_sync_cost
    from wmtp.recipes.experience import CriticSnapshot

    critic = apply_fsdp(_critic(), mixed_precision=False)
    kept = gather_state_dict(critic, keep=rank == 0)
    bf16 = gather_state_dict(critic, dtype=torch.bfloat16, keep=rank == 0)
    largest = max(t.numel() for _, t in iter_full_tensors(critic))  # a collective: every rank
    cfg = recipe_config("critic", out, "orchestration.enabled=true", "orchestration.placement=colocated",
                        "orchestration.fsdp=true", "orchestration.num_workers=2",
                        "stage2.critic_sync_interval=2")
    export = export_model(critic, cfg, DistEnv.from_env("cpu"), value_head="linear")
    # Snapshot: refreshed from this rank's shards; its bytes against the plan's per-rank figure.
    snapshot = CriticSnapshot(critic, torch.float32)
    written = snapshot.refresh(critic, 1)
    plan = weight_sync_cost(cfg.model_copy(update={"recipe": "verifiable"}),
                            sum(p.numel() for p in critic.parameters()))
    same = all(torch.equal(a.to_local(), b.to_local())
               for a, b in zip(snapshot.model.parameters(), critic.parameters(), strict=True))
    return {"kept": kept, "bf16": bf16, "largest": largest, "export": str(export), "written": written,
            "plan_per_rank": plan.bytes_per_publish_per_rank, "plan_total": plan.bytes_per_publish_total,
            "snapshot_equal": same}


def test_sharded_gather_and_export_equal_the_unsharded_model(tmp_path):
    from wmtp.checkpoint import load_value_model

    reference = _critic().state_dict()
    ranks = run_distributed(_rank, 2, str(tmp_path))
    zero, one = ranks
    assert one["kept"] is None and one["bf16"] is None  # rank 1 only took part in the gathers
    assert zero["kept"].keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(zero["kept"][key], value), key
        assert zero["bf16"][key].dtype == torch.bfloat16 and torch.equal(zero["bf16"][key], value.bfloat16()), key
    assert zero["largest"] == max(v.numel() for v in reference.values())  # one tensor at a time
    exported = load_value_model(zero["export"]).state_dict()
    for key, value in reference.items():
        assert torch.equal(exported[key], value), key
    # Snapshot refresh: local shards only, the bytes the plan states per rank (2-rank FSDP).
    assert zero["snapshot_equal"] and one["snapshot_equal"]
    assert zero["written"] + one["written"] == state_dict_bytes(_critic())
    # FSDP2 splits each tensor (dim 0) unevenly: the busiest rank is within 1% of the even split.
    assert max(zero["written"], one["written"]) == pytest.approx(zero["plan_per_rank"], rel=0.01)
    assert zero["written"] + one["written"] == pytest.approx(zero["plan_total"], rel=0.02)

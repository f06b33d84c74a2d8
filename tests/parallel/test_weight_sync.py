"""The weight-sync cost of the plan (`wmtp.parallel.weight_sync`): which mechanism each recipe and
placement uses and the bytes it moves; the dry run prints it. (That the bytes equal what the micro
model moves is tested where it moves them: tests/parallel/test_gather.py for the snapshot copy,
tests/orchestration/test_experience.py for the one `ray.put`.)"""

from __future__ import annotations

import pytest

from tests.recipes.harness import REPO
from wmtp.config.loader import load_config
from wmtp.parallel.weight_sync import weight_sync_cost

P = 6_000_197_633  # the 7b-mtp4 critic
GIB = 1024 ** 3


def a100x4(recipe: str, *overrides: str):
    return load_config(str(REPO / "configs/defaults.yaml"), str(REPO / f"configs/recipe.{recipe}.yaml"), "a100x4",
                       overrides=list(overrides))


def test_colocated_interval_1_moves_nothing_and_interval_4_copies_local_shards():
    assert weight_sync_cost(a100x4("verifiable", "stage2.critic_sync_interval=1"), P).bytes_per_publish_total == 0
    cost = weight_sync_cost(a100x4("verifiable", "stage2.critic_sync_interval=4", "train.precision=bf16"), P)
    assert cost.publishes_per_step == 0.25
    assert cost.bytes_per_publish_per_rank == -(-P // 4) * 2  # a quarter of the bf16 critic
    assert cost.bytes_per_step_total == pytest.approx(P * 2 / 4)


def test_async_sends_each_byte_through_the_object_store_once():
    cost = weight_sync_cost(a100x4("verifiable", "orchestration.placement=async", "train.precision=bf16"), P)
    assert cost.object_store_bytes_per_publish == P * 2  # bf16, once, not once per rank
    assert cost.bytes_per_publish_per_rank == P * 2 * 3 // 4 + P * 2  # rank 0: its gathers + the put
    two_nodes = weight_sync_cost(a100x4("verifiable", "orchestration.placement=async", "train.precision=bf16"), P,
                                 nodes=2)
    assert two_nodes.bytes_per_publish_total - cost.bytes_per_publish_total == P * 2


def test_frozen_models_publish_nothing_per_step():
    frozen = weight_sync_cost(a100x4("verifiable", "stage2.value_loss.enabled=false"), P)
    assert frozen.bytes_per_step_total == 0
    rho1 = weight_sync_cost(a100x4("rho1_weighted", "orchestration.placement=async"), P)
    assert rho1.publishes_per_step == 0 and rho1.object_store_bytes_per_publish > 0


def test_the_dry_run_prints_the_weight_sync(capsys):
    from wmtp.cli import main

    code = main(["train", "--recipe", "configs/recipe.verifiable.yaml", "--preset", "a100x4", "--dry-run",
                 "stage2.critic_sync_interval=4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "# weight sync" in out and "snapshot copy from local shards" in out
    assert "per_step_per_rank_gib: " in out

"""Per-rank values (`worker/<r>/...`, docs/TRACKING.md) on 2 gloo ranks: every rank's value is logged
under its own name, and they add up to the global statistic (the count-weighted mean of the
per-rank weight means is the global `train/weights/mean`)."""

from __future__ import annotations

import pytest

from tests.fixtures.distributed import run_distributed
from tests.recipes.harness import recipe_config, run
from tests.recipes.learner_runs import rank_train
from wmtp.config.paths import export_dir

PER_RANK = ("train/tokens", "train/weights/targets", "train/weights/mean")


@pytest.mark.distributed
def test_two_ranks_log_per_rank_values_that_make_up_the_global_ones(tmp_path):
    ranks = run_distributed(rank_train, 2, "verifiable", str(tmp_path), ("train.steps=2", "train.eval_every=2",
                                                                          "train.checkpoint_every=2"))
    for step in (1, 2):
        logged = ranks[0]["metrics"][step]
        assert {f"worker/{r}/{k}" for r in (0, 1) for k in PER_RANK} <= logged.keys(), sorted(logged)
        assert not any(k.startswith("worker/2/") for k in logged)
        # every rank holds the same per-rank values (one all_gather), whoever logs them
        assert {k: v for k, v in ranks[1]["metrics"][step].items() if k.startswith("worker/")} == \
            {k: v for k, v in logged.items() if k.startswith("worker/")}
        targets = [logged[f"worker/{r}/train/weights/targets"] for r in (0, 1)]
        means = [logged[f"worker/{r}/train/weights/mean"] for r in (0, 1)]
        assert all(t > 0 for t in targets)
        # (per-rank means are of the float32 weights the loss uses, the global one of their float64 source)
        assert sum(t * m for t, m in zip(targets, means)) / sum(targets) == pytest.approx(
            logged["train/weights/mean"], rel=1e-6)
        assert all(logged[f"worker/{r}/train/tokens"] > 0 for r in (0, 1))
        # the step's counts are summed over ranks exactly (count_step; one all-reduce when logging)
        assert logged["train/tokens"] == sum(logged[f"worker/{r}/train/tokens"] for r in (0, 1))
        assert logged["train/targets"] == sum(targets)
    # the shards differ (what the per-rank values are for): renormalised to 1 globally, not per rank
    assert ranks[0]["metrics"][1]["train/weights/mean"] == pytest.approx(1.0, abs=1e-9)
    assert ranks[0]["metrics"][1]["worker/0/train/weights/mean"] != pytest.approx(1.0, abs=1e-6)


@pytest.mark.distributed
def test_rho1_per_rank_values_make_up_the_global_mean_excess(tmp_path):
    reference = recipe_config("ref_tuning", tmp_path / "ref", "train.steps=1", "train.heatmap_samples=0",
                              "model.n_future_tokens=1")
    run(reference)
    ranks = run_distributed(rank_train, 2, "rho1_weighted", str(tmp_path / "rho1"),
                            ("train.steps=1", "train.heatmap_samples=0", f"rho1.reference={export_dir(reference)}"))
    logged = ranks[0]["metrics"][1]
    n = [logged[f"worker/{r}/train/rho1/targets/head1"] for r in (0, 1)]
    e = [logged[f"worker/{r}/train/rho1/mean_excess/head1"] for r in (0, 1)]
    assert all(c > 0 for c in n) and all(logged[f"worker/{r}/train/tokens"] > 0 for r in (0, 1))
    assert sum(c * x for c, x in zip(n, e)) / sum(n) == pytest.approx(logged["train/rho1/mean_excess/head1"],
                                                                      rel=1e-9, abs=1e-12)

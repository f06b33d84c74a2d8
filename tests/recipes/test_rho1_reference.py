"""Rho-1's live reference under FSDP2 is built on the meta device, sharded like the learner and
filled by rank 0 alone (`Rho1WeightedRecipe.sharded_reference`): on 2 gloo ranks its gathered
weights equal the reference read whole in the compute dtype, and the recipe trains with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures.distributed import run_distributed
from tests.recipes.harness import recipe_config
from tests.recipes.learner_runs import fingerprint, train


def reference_export(folder: Path, output_dir: Path) -> Path:
    """A one-head reference of the tiny policy's shapes (what ref_tuning exports), seeded."""
    from wmtp.checkpoint import save_model
    from wmtp.data.streams import load_data
    from wmtp.model.transformer import build_model
    from wmtp.parallel.build import policy_args

    cfg = recipe_config("rho1_weighted", output_dir)
    args = policy_args(cfg, load_data(cfg).tokenizer.vocab_size).replace(n_future_tokens=1)
    save_model(build_model(args, seed=7), folder)
    return folder


def rank_reference(rank: int, world_size: int, reference: str, output_dir: str) -> dict:
    from wmtp.parallel.reduce import process_layout
    from wmtp.recipes import build_recipe
    from wmtp.tracking.base import NullLogger

    cfg = recipe_config("rho1_weighted", output_dir, f"rho1.reference={reference}", "orchestration.fsdp=true")
    recipe = build_recipe(cfg, logger=NullLogger(), checkpoint_sink=None)
    recipe.layout = process_layout(False)
    spec, model = recipe.sharded_reference()
    assert not any(p.requires_grad for p in model.parameters())
    return {"fingerprint": fingerprint(model), "dtypes": sorted({str(p.dtype) for p in model.parameters()})}


@pytest.mark.distributed
def test_the_sharded_reference_equals_the_whole_one_and_trains(tmp_path):
    from wmtp.checkpoint import load_model

    reference = reference_export(tmp_path / "reference", tmp_path)
    ranks = run_distributed(rank_reference, 2, str(reference), str(tmp_path / "out"))
    whole = fingerprint(load_model(reference))
    for result in ranks:
        assert result["dtypes"] == ["torch.float32"]  # the tiny config trains in fp32
        assert result["fingerprint"].keys() == whole.keys()
        for key, (s, sq) in whole.items():
            assert result["fingerprint"][key] == pytest.approx((s, sq), rel=1e-6, abs=1e-9), key

    # The recipe trains on 2 ranks with it (finite losses; the weights are global statistics).
    out = run_distributed(_rank_train, 2, str(reference), str(tmp_path / "train"))[0]
    losses = [out["metrics"][s]["train/loss"] for s in sorted(out["metrics"]) if "train/loss" in out["metrics"][s]]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


def _rank_train(rank: int, world_size: int, reference: str, output_dir: str) -> dict:
    return train("rho1_weighted", Path(output_dir), f"rho1.reference={reference}", "orchestration.fsdp=true")

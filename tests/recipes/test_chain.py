"""Stage chaining from nothing: critic → verifiable and ref_tuning → rho1_weighted."""

from __future__ import annotations

import pytest

from tests.recipes.harness import recipe_config, run, series


@pytest.mark.parametrize("recipe, producer, key", [("verifiable", "critic", "value_model.checkpoint"),
                                                   ("rho1_weighted", "ref_tuning", "rho1.reference")])
def test_chain_runs_the_producer_once_then_reuses_it(recipe, producer, key, tmp_path, capsys):
    out = run(recipe_config(recipe, tmp_path, "train.steps=2"))
    said = capsys.readouterr().out
    assert f"{key} is not set; running the {producer!r} stage first" in said
    export = tmp_path / f"{recipe}-local-light-{producer}" / "export"
    assert (export / "params.json").exists()
    assert len(series(out, "train/loss")) == 2
    first = export.stat().st_mtime_ns
    # The same command again: the stage's export is reused (the run itself resumes, already done).
    again = run(recipe_config(recipe, tmp_path, "train.steps=2"))
    said = capsys.readouterr().out
    assert f"reusing {producer} output {export} for {key}" in said and "stage first" not in said
    assert export.stat().st_mtime_ns == first
    assert series(again, "train/loss") == series(out, "train/loss")


def test_cluster_configuration_names_the_missing_key(tmp_path):
    from wmtp.recipes.chain import MissingInputError

    with pytest.raises(MissingInputError, match=r"value_model\.checkpoint is not set.*critic"):
        run(recipe_config("verifiable", tmp_path, "orchestration.use_gpu=true"))

"""Gradient accumulation changes nothing: 2 micro-batches of 4 equal 1 batch of 8 (same rows,
different padding), because every denominator and every weight statistic is over the whole step."""

from __future__ import annotations

import pytest

from tests.recipes.harness import recipe_config, run, series

KEYS = {"baseline": ("train/loss",),
        "verifiable": ("train/loss", "train/value_loss", "train/weights/mean_before_renorm")}


@pytest.mark.parametrize("recipe", sorted(KEYS))
def test_two_micro_batches_equal_one_batch(recipe, tmp_path):
    # verifiable first trains its critic stage with the same batching: that stage must agree too.
    one = recipe_config(recipe, tmp_path / "one", "data.batch_size=8", "data.grad_accum=1", "train.steps=3")
    two = recipe_config(recipe, tmp_path / "two", "data.batch_size=4", "data.grad_accum=2", "train.steps=3")
    dir_one, dir_two = run(one), run(two)
    for key in KEYS[recipe]:
        a, b = series(dir_one, key), series(dir_two, key)
        assert len(a) == 3, key
        assert b == pytest.approx(a, rel=2e-5, abs=1e-6), key

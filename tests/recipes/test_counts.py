"""One count for every recipe (`wmtp.training.throughput.count_step`): at `data.grad_accum=2`, on
the same batches (`data.samples=all`: every recipe then draws the same rows), baseline, critic,
verifiable and Rho-1 log the same real tokens and trained targets per step and in total, and
they equal a slow count over the stream's batches; under `data.samples=correct` the policy's
targets (verifiable's, and ref_tuning's, which always learns from correct solutions) are those of
the correct solutions only, while its tokens are all it forwarded."""

from __future__ import annotations

import pytest

from tests.recipes.harness import recipe_config, run, series
from wmtp.config.paths import export_dir
from wmtp.data.streams import load_data, train_stream
from wmtp.parallel.reduce import process_layout

STEPS = 3
SAME = ("data.samples=all", "data.batch_size=2", "data.grad_accum=2", f"train.steps={STEPS}",
        f"train.eval_every={STEPS}", f"train.checkpoint_every={STEPS}", "train.heatmap_samples=0")
KEYS = ("train/tokens", "train/targets", "perf/tokens_seen", "perf/targets_seen")


def slow_count(cfg, correct_only: bool) -> list[tuple[int, int]]:
    """(real tokens, head-1 targets) of each step, one row and one position at a time."""
    stream = train_stream(load_data(cfg).train, cfg, process_layout(False), samples="all")
    steps = []
    for _ in range(STEPS):
        tokens = targets = 0
        for _ in range(cfg.data.grad_accum):
            batch = stream.next()
            for mask, labels, correct in zip(batch.attention_mask.tolist(), batch.labels.tolist(),
                                             batch.is_correct.tolist()):
                tokens += sum(1 for m in mask if m)
                if correct or not correct_only:  # head 1 at position t predicts labels[t + 1]
                    targets += sum(1 for t in range(len(labels) - 1) if labels[t + 1] != -100)
        steps.append((tokens, targets))
    return steps


def logged(out) -> dict[str, list[float]]:
    return {k: series(out, k) for k in KEYS}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each recipe's logged counts and its config; baseline's export (one head) is Rho-1's
    reference and the critic's export the verifiable critic, so no producing stage runs."""
    out = tmp_path_factory.mktemp("counts")
    cfgs = {r: recipe_config(r, out / r, *SAME) for r in ("baseline", "critic")}
    got = {r: logged(run(cfg)) for r, cfg in cfgs.items()}
    inputs = {"verifiable": f"value_model.checkpoint={export_dir(cfgs['critic'])}",
              "rho1_weighted": f"rho1.reference={export_dir(cfgs['baseline'])}"}
    for r, given in inputs.items():
        cfgs[r] = recipe_config(r, out / r, *SAME, given)
        got[r] = logged(run(cfgs[r]))
    return cfgs, got, inputs["verifiable"], out


def test_every_recipe_counts_the_same_tokens_and_targets(runs):
    cfgs, got, _, _ = runs
    want = slow_count(cfgs["baseline"], correct_only=False)
    for recipe, counts in got.items():
        assert counts["train/tokens"] == [float(t) for t, _ in want], recipe
        assert counts["train/targets"] == [float(n) for _, n in want], recipe
        assert counts["perf/tokens_seen"] == [float(sum(t for t, _ in want[:s + 1])) for s in range(STEPS)], recipe
        assert counts["perf/targets_seen"] == [float(sum(n for _, n in want[:s + 1])) for s in range(STEPS)], recipe


@pytest.mark.parametrize("recipe", ["verifiable", "ref_tuning"])
def test_masked_solutions_are_forwarded_but_not_trained_targets(runs, recipe):
    _, _, critic, out = runs
    given = critic if recipe == "verifiable" else "data.draw=all"  # ref_tuning draws what it learns from
    cfg = recipe_config(recipe, out / f"correct_only_{recipe}", *SAME, given, "data.samples=correct")
    got = logged(run(cfg))
    want = slow_count(cfg, correct_only=True)
    assert got["train/tokens"] == [float(t) for t, _ in want]
    assert got["train/targets"] == [float(n) for _, n in want]
    assert all(n < t for t, n in want)  # prompts (and here incorrect solutions) are no targets

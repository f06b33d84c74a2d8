"""Golden per-step metrics of every recipe on the tiny deterministic configuration (4 steps, micro
model with one head unless a case sets more, 4×96-token batches, the bundled 200-problem task),
read back from the JSONL log.

The numbers were produced by these recipes on CPU (torch 2.13, fp32) and pasted here; a change in
any of model init, data order, loss math, weighting or the optimizer shows up as a mismatch. To
regenerate after an intended change, print `series(...)` for each case and paste.
"""

from __future__ import annotations

import math

import pytest

from tests.recipes.cases import CASES
from tests.recipes.harness import recipe_config, run, series

GOLDEN = {
    'baseline': {
        'train/loss': [7.0129356, 6.5848999, 6.0862155, 5.6496315],
        'val/ce': [5.1568828],
    },
    'baseline_mtp4': {
        'train/loss': [6.9504738, 6.4127507, 5.7869267, 5.6006002],
        'train/ce_head4': [6.9042406, 6.4037528, 5.8142905, 5.6194992],
        'val/ce_head4': [4.9870124],
    },
    'ref_tuning': {
        'train/loss': [7.0129356, 6.5848999, 6.0862155, 5.6496315],
    },
    'critic': {
        'train/value_loss': [0.4390754, 3.0926418, 6.1990438, 0.7798197],
        # One 4-sample validation batch after 4 steps: the critic ranks every correct sample
        # below every incorrect one (a run's value; one class only would give nan, not 0).
        'val/critic_auc': [0.0],
    },
    'critic_pairwise': {
        'train/value_loss': [0.6944411, 0.6733987],
        'train/pairwise_accuracy': [0.5, 0.5],
    },
    'verifiable': {
        # steps 2-4 hold 1, 2, 2 responses cut at max_seq_len (no terminal reward: docs/MATH.md)
        'train/loss': [7.3645029, 6.765481, 6.1060319, 6.2996297],
        'train/value_loss': [0.1959384, 0.0733521, 0.0062269, 0.0072356],
        'train/weights/mean': [1.0, 1.0, 1.0, 1.0],
        'train/weights/ess': [0.5314542, 0.6215938, 0.511243, 0.5356195],
        'train/weights/position_spearman': [0.893952, -0.3653226, 0.5096229, -0.7477591],
    },
    'verifiable_mtp4': {
        'train/loss': [7.1339331, 6.8427138, 6.3697653, 5.9265213],
        'train/weighted_ce_head4': [6.990871, 6.73667, 6.4655523, 5.9682732],
    },
    'rho1_live': {
        'train/loss': [7.1509256, 6.4295454, 6.1824012, 5.8228035],
        'train/weighted_ce_head1': [7.1509271, 6.4295454, 6.1824012, 5.822803],
        # top-k keeps ceil(0.6 N) targets at weight N / kept: the ESS is the kept fraction
        'train/weights/ess': [0.6, 0.6097561, 0.6071429, 0.6060606],
    },
}


def assert_close(actual: list[float], expected: list[float], what: str) -> None:
    assert len(actual) == len(expected), f"{what}: {actual} vs {expected}"
    for a, e in zip(actual, expected):
        assert math.isclose(a, e, rel_tol=1e-4, abs_tol=1e-6), f"{what}: {actual} vs golden {expected}"


@pytest.fixture(scope="module")
def shared_out(tmp_path_factory):
    """One output dir for the module: producing stages (critic, ref_tuning) are reused by name."""
    return tmp_path_factory.mktemp("golden")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_per_step_metrics(case, shared_out):
    recipe, overrides, keys = CASES[case]
    out = run(recipe_config(recipe, shared_out / case, *overrides))
    for key in keys:
        assert_close(series(out, key), GOLDEN[case][key], f"{case} {key}")


def test_ref_tuning_is_the_one_head_baseline():
    """The micro preset has one head and baseline learns from correct solutions: ref_tuning's
    loop is the same computation."""
    assert GOLDEN["ref_tuning"]["train/loss"] == GOLDEN["baseline"]["train/loss"]


def test_losses_fall_and_mtp_heads_are_logged():
    for case in ("baseline", "baseline_mtp4", "rho1_live"):
        losses = GOLDEN[case]["train/loss"]
        assert losses[-1] < losses[0] - 0.5, case


def test_rho1_with_precomputed_reference_losses(shared_out, capsys):
    """`wmtp data score-reference` on the ref_tuning export, then rho1_weighted with
    `data.reference_losses`: the same weights as the live reference, so the same losses."""
    from wmtp.cli import main

    live = run(recipe_config("rho1_weighted", shared_out / "rho1_pre_live"))
    reference = shared_out / "rho1_pre_live" / "rho1_weighted-local-light-ref_tuning" / "export"
    assert (reference / "params.json").exists()
    npz = shared_out / "ref-losses.npz"
    from tests.recipes.harness import TINY

    code = main(["data", "score-reference", "--reference", str(reference), "--out", str(npz),
                 "--recipe", "rho1_weighted", "--preset", "local-light", *TINY])
    printed = capsys.readouterr().out
    assert code == 0 and str(npz) in printed and npz.exists()
    pre = run(recipe_config("rho1_weighted", shared_out / "rho1_pre", f"data.reference_losses={npz}"))
    assert not (shared_out / "rho1_pre" / "rho1_weighted-local-light-ref_tuning").exists()  # no stage ran
    assert_close(series(pre, "train/loss"), series(live, "train/loss"), "precomputed vs live")
    assert_close(series(pre, "train/loss"), GOLDEN["rho1_live"]["train/loss"], "precomputed vs golden")
    # With its live reference here the run also reads its weights at the validation set's decisive
    # tokens (stored losses cover training rows only: no such figure); the summary prints it.
    aucs, n = series(live, "weights/decisive_auc"), series(live, "weights/decisive_solutions")
    assert aucs and all(0.0 < a < 1.0 for a in aucs) and n[-1] > 0
    assert not series(pre, "weights/decisive_auc")
    from wmtp.tracking.console import weights_line

    line = weights_line({k: series(live, k)[-1] for k in ("train/weights/ess", "weights/decisive_auc")})
    assert line is not None and f"decisive-token AUC {aucs[-1]:.4f}" in line, line

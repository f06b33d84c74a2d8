"""`wmtp study`: the spec and its errors, the dry runs of the shipped specs, the report's verdicts,
and a tiny study (2 arms × 2 seeds, a few steps) through Ray Tune end to end: gated stages, paired
arms on equal trained targets, RESULTS.md rewritten byte for byte by `--report-only`, resumable."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from wmtp.config.loader import REPO_ROOT, ConfigError
from wmtp.study.spec import StudySpec, arm_config, load_study_spec

MICRO = REPO_ROOT / "configs" / "study.micro.yaml"
A100 = REPO_ROOT / "configs" / "study.a100x4.yaml"


@pytest.mark.parametrize("spec", [MICRO, A100], ids=["micro", "a100x4"])
def test_shipped_spec_dry_run(spec, capsys):
    from wmtp.cli import main

    assert main(["study", "--spec", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    loaded = load_study_spec(spec)
    assert f"{len(loaded.arms)} arms × {len(loaded.seeds)} seeds" in out and len(loaded.seeds) >= 3
    assert "stage ntp" in out and "stage critic" in out
    for arm in loaded.arms:
        assert f"  {arm} " in out
    # the design the issue asks for: both settings, every control, claims stated up front
    assert set(loaded.settings) == {"clean", "noisy"}
    sources = {a: arm_config(loaded, a, 0).stage2.value_weighting for a, x in loaded.arms.items() if x.recipe == "verifiable"}
    assert {(v.source, v.shuffle) for v in sources.values()} >= {("critic", False), ("critic", True), ("position", False)}
    claim = next(c for c in loaded.claims if c.name == "critic_helps")
    assert {loaded.arms[a].recipe for a in claim.against} == {"baseline", "verifiable"} and len(claim.against) == 3


def test_arms_of_a_setting_share_batches_and_the_stage_exports():
    spec = load_study_spec(MICRO)
    cfgs = {a: arm_config(spec, a, 1) for a in spec.arms}
    for setting in spec.settings:
        arms = [a for a, x in spec.arms.items() if x.setting == setting]
        draws = {(cfgs[a].data.samples, cfgs[a].data.draw, cfgs[a].run.seed, cfgs[a].train.steps, cfgs[a].data.batch_size)
                 for a in arms}
        assert len(draws) == 1, (setting, draws)
    critic = cfgs["critic"]
    assert critic.value_model.checkpoint.endswith("micro-critic/export") and not critic.stage2.value_loss.enabled
    assert cfgs["noisy_rho1"].rho1.reference.endswith("micro-ntp/export")  # trained on correct solutions only


def test_spec_errors_name_the_arm_and_the_allowed_values(tmp_path):
    from wmtp.cli import main
    from wmtp.study.experiment import plan_study

    base = yaml.safe_load(MICRO.read_text())
    base["arms"]["critic"]["overrides"] = {"train.steps": 7}
    with pytest.raises(ConfigError, match="one budget"):
        plan_study(StudySpec.model_validate(base))
    base["arms"]["critic"]["overrides"] = {"stage2.value_weighting.shufle": True}
    with pytest.raises(ConfigError, match="(?s)arm critic.*shufle"):
        plan_study(StudySpec.model_validate(base))
    base = yaml.safe_load(MICRO.read_text())
    base["claims"][0]["against"] = ["noisy_uniform"]
    with pytest.raises(ValueError, match="different settings"):
        StudySpec.model_validate(base)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(MICRO.read_text()), "seedz": [1]}))
    assert main(["study", "--spec", str(bad), "--dry-run"]) == 2


def tiny_spec() -> dict:
    """2 arms × 2 seeds on a small task, a few steps: the whole pipeline in about a minute."""
    return {
        "name": "tiny", "config": "configs/defaults.yaml", "preset": "local-light", "use_micro_model": True,
        "overrides": {"data.synth_problems": 130, "data.batch_size": 4, "data.max_seq_len": 64,
                      "model.n_future_tokens": 2, "train.steps": 4, "train.eval_every": 2, "train.log_every": 2,
                      "train.eval_batches": 1, "train.checkpoint_every": 2, "train.heatmap_samples": 0,
                      "optim.warmup_steps": 1, "orchestration.enabled": False, "orchestration.num_workers": 1,
                      "orchestration.placement": "colocated", "value_model.quality_max_solutions": 16,
                      "tracking.backends": ["jsonl"]},
        "stages": {"ntp": {"min_pass_at_1": 0.0}, "critic": {"overrides": {"train.steps": 3}}},
        "settings": {"clean": {"overrides": {"data.samples": "correct", "data.draw": "samples"}}},
        "arms": {"uniform": {"setting": "clean", "recipe": "baseline"},
                 "critic": {"setting": "clean", "recipe": "verifiable",
                            "overrides": {"stage2.value_weighting.source": "critic"}}},
        "claims": [{"name": "c", "arm": "critic", "against": ["uniform"], "statement": "critic weighting helps"}],
        "seeds": [0, 1], "max_concurrent_trials": 2,
        "evaluation": {"max_new_tokens": 12, "batch_size": 32, "max_tasks": 8, "max_valid_solutions": 40,
                       "decisive_records": 6},
        "bootstrap": 100, "results": None,
    }


def test_ntp_gate_stops_the_study_and_says_why(tmp_path):
    """A budget whose NTP stage misses the pass@1 gate trains no arm; the report says so."""
    from wmtp.study.experiment import StudyReport, plan_study
    from wmtp.study.report import headline_lines

    spec = StudySpec.model_validate({**tiny_spec(), "stages": {"ntp": {"min_pass_at_1": 0.2}}})
    report = StudyReport(plan_study(spec, str(tmp_path)), [], {"ntp": {"pass@1": 0.05, "steps": 4, "tasks": 8,
                                                                       "gate_passed": False}}, float("nan"))
    assert report.stopped
    assert "budget is too small" in headline_lines(report)[0] and "0.050" in headline_lines(report)[0]


@pytest.mark.ray
def test_tiny_study_end_to_end(ray_cluster, tmp_path):
    from wmtp.study.experiment import report_only, run_study

    spec = StudySpec.model_validate(tiny_spec())
    results = tmp_path / "docs" / "RESULTS.md"
    printed: list[str] = []
    report = run_study(spec, output_dir=str(tmp_path / "runs"), results=str(results), command="wmtp study --spec tiny.yaml",
                       log=printed.append)
    assert not report.missing and len(report.runs) == 4
    assert [s for s in ("ntp", "critic") if any(f"running stage {s}" in line for line in printed)] == ["ntp", "critic"]
    # the gate refuses a critic trained 3 steps (near chance), and the report says so
    assert report.stages["critic"]["gate_passed"] is False and "ungated critic" in results.read_text()
    # equal trained targets, counted per run by replaying its batches: paired seed by seed
    targets = {(r.arm, r.seed): r.scalars["trained_targets"] for r in report.runs}
    assert targets[("uniform", 0)] == targets[("critic", 0)] > 0 and targets[("uniform", 1)] == targets[("critic", 1)]
    run = next(r for r in report.runs if r.arm == "critic")
    assert len(run.items["pass@1"]) == 8 and run.items["ce_head1"] and run.items["ce_head2"]
    assert 0 <= run.scalars["weights/ess"] <= 1 and -1 <= run.scalars["weights/position_spearman"] <= 1
    assert 0 <= run.scalars["decisive/weights_auc_incorrect"] <= 1
    text = results.read_text()
    assert "**critic weighting helps** (pass@1): **" in text and "| clean | `critic` (ungated critic) − `uniform` |" in text
    assert (results.parent / "results_tiny.png").stat().st_size > 1000
    # --report-only rewrites the same file byte for byte
    again = tmp_path / "again" / "RESULTS.md"
    report_only(spec, output_dir=str(tmp_path / "runs"), results=str(again))
    assert again.read_text() == text
    # a rerun reuses the stages and every measured run: no training, same numbers
    rerun = run_study(spec, output_dir=str(tmp_path / "runs"), results=str(again), log=printed.append)
    assert sorted((r.arm, r.seed, r.scalars["pass@1"]) for r in rerun.runs) == \
        sorted((r.arm, r.seed, r.scalars["pass@1"]) for r in report.runs)
    assert json.loads((tmp_path / "runs" / "study-tiny.json").read_text())["runs_reused"] == 4
    assert math.isfinite(rerun.wall_s)


@pytest.mark.slow
@pytest.mark.ray
def test_full_micro_study(tmp_path):
    """The shipped micro study from nothing (about two hours on an idle 2-core machine)."""
    import subprocess
    import sys

    results = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, "-m", "wmtp", "study", "--spec", str(MICRO), "--output-dir",
                           str(tmp_path / "runs"), "--results", str(results)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    for claim in load_study_spec(MICRO).claims:
        assert f"**{claim.statement}**" in text
    assert "Missing runs" not in text

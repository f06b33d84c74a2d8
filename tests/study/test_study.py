"""`wmtp study`: the spec, the dry runs of the shipped specs, and a 1-seed few-step smoke study
through Ray Tune (stages once, runs measured, table + RESULTS.md + plot, nested MLflow runs)."""

from __future__ import annotations

import math
import re

import pytest
import yaml

from wmtp.config.loader import REPO_ROOT, ConfigError
from wmtp.config.study import StudySpec, load_study_spec, method_config

MICRO = REPO_ROOT / "configs" / "study.micro.yaml"
A100 = REPO_ROOT / "configs" / "study.a100x4.yaml"


@pytest.mark.parametrize("spec", [MICRO, A100], ids=["micro", "a100x4"])
def test_shipped_spec_dry_run(spec, capsys):
    from wmtp.cli import main

    assert main(["study", "--spec", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    loaded = load_study_spec(spec)
    assert f"{len(loaded.methods)} methods × {len(loaded.seeds)} seeds" in out
    for method in loaded.methods:
        assert method in out
    assert len(loaded.seeds) >= 3
    for needed in ("ntp", "mtp", "critic_frozen", "critic_cl", "critic_cl_raw", "critic_cl_shuffled",
                   "rho1_topk", "rho1_continuous"):
        assert needed in loaded.methods
    assert "stage critic" in out and "stage ref_tuning" in out


def test_a100_spec_is_the_7b_grid_with_code_benchmarks():
    spec = load_study_spec(A100)
    cfg = method_config(spec, "mtp", spec.seeds[0])
    assert cfg.model.preset == "7b-mtp4" and cfg.model.checkpoint and cfg.orchestration.use_gpu
    assert method_config(spec, "ntp", 0).model.n_future_tokens == 1
    names = {b.name for b in spec.evaluation.benchmarks}
    assert "humaneval" in names and any(b.name == "jsonl" and "mbpp" in (b.path or "") for b in spec.evaluation.benchmarks)
    micro = load_study_spec(MICRO)
    assert set(micro.methods) <= set(spec.methods)  # the cluster grid adds the shuffled Rho-1 control


def test_budget_and_key_errors_name_the_method(tmp_path):
    from wmtp.cli import main
    from wmtp.orchestration.study import plan_study

    base = yaml.safe_load(MICRO.read_text())
    base["methods"]["mtp"]["overrides"] = {"train.steps": 7}
    with pytest.raises(ConfigError, match="token budget"):
        plan_study(StudySpec.model_validate(base))
    base["methods"]["mtp"]["overrides"] = {"stage2.value_weighting.shufle": True}
    with pytest.raises(ConfigError, match="(?s)method mtp.*shufle"):
        plan_study(StudySpec.model_validate(base))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(MICRO.read_text()), "seedz": [1]}))
    assert main(["study", "--spec", str(bad), "--dry-run"]) == 2


def smoke_spec(tmp_path) -> StudySpec:
    """The micro study at 1 seed and 4 steps on a small task, one method per weighting family."""
    d = yaml.safe_load(MICRO.read_text())
    d["name"] = "smoke"
    d["overrides"].update({"data.synth_problems": 130, "data.batch_size": 4, "data.max_seq_len": 96,
                           "train.steps": 4, "train.eval_every": 2, "train.log_every": 2,
                           "train.eval_generate_every": 2, "train.checkpoint_every": 4,
                           "orchestration.report_every": 2})
    d["stages"] = {"critic": {"train.steps": 3}, "ref_tuning": {"train.steps": 3}}
    d["methods"] = {k: d["methods"][k] for k in ("mtp", "critic_cl_shuffled", "rho1_topk")}
    d["seeds"] = [0]
    d["evaluation"].update({"tasks_per_family": 1, "n_samples": 2, "ks": [1, 2], "max_new_tokens": 24,
                            "decisive_records": 8})
    d["thresholds"] = {"val/ce": {"level": 100.0, "mode": "min"}}
    d["bootstrap"] = 50
    return StudySpec.model_validate(d)


def test_report_only_aggregates_what_is_on_disk_and_names_missing_runs(tmp_path):
    """`--report-only`: measured runs are aggregated (CIs over seeds), unfinished ones listed."""
    import json

    from wmtp.cli import main
    from wmtp.config.paths import run_dir
    from wmtp.evaluation.study_metrics import RunMeasures
    from wmtp.orchestration.study import MEASURES_FILE

    d = yaml.safe_load(MICRO.read_text())
    d["methods"] = {k: d["methods"][k] for k in ("mtp", "rho1_topk")}
    d["seeds"] = [0, 1]
    d["results"] = str(tmp_path / "docs" / "RESULTS.md")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(d))
    spec = load_study_spec(spec_path)
    for method, seed, ce in (("mtp", 0, 2.0), ("mtp", 1, 3.0), ("rho1_topk", 0, 2.5)):
        cfg = method_config(spec, method, seed, str(tmp_path / "runs"))
        run_dir(cfg).mkdir(parents=True)
        m = RunMeasures(method, seed, {"val/ce_head1": ce, "decisive/auc": 0.4},
                        {"pass@1": [1.0, 0.0], "pass@5": [1.0, 1.0], "pass@1/add_const": [1.0]},
                        {"val/ce": [(10.0, 5.0), (20.0, ce)]})
        (run_dir(cfg) / MEASURES_FILE).write_text(json.dumps(m.to_json()))
    assert main(["study", "--spec", str(spec_path), "--output-dir", str(tmp_path / "runs"), "--report-only"]) == 0
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "| mtp | 2.500 [2.000, 3.000] n=2 |" in text.replace("  ", " ")
    assert "micro-rho1_topk-s1" in text and "Missing runs" in text
    assert (tmp_path / "docs" / "results_micro.png").is_file()


@pytest.mark.ray
def test_smoke_study_end_to_end(ray_cluster, mlflow_sqlite, tmp_path):
    from wmtp.orchestration.study import run_study

    spec = smoke_spec(tmp_path)
    spec.overrides["tracking.uri"] = mlflow_sqlite.uri
    results = tmp_path / "docs" / "RESULTS.md"
    printed: list[str] = []
    report = run_study(spec, output_dir=str(tmp_path / "runs"), results=str(results),
                       command="wmtp study --spec smoke.yaml", log=printed.append)
    assert not report.missing and len(report.runs) == 3
    progress = [line for line in printed if re.match(r"\[wmtp\] study smoke: run \d/3 done \(\w+ s\d\), elapsed", line)]
    assert [line.split(" run ")[1][:3] for line in progress] == ["1/3", "2/3", "3/3"], printed
    row = report.table["mtp"]
    assert math.isfinite(row["val/ce_head1"][0]) and math.isfinite(row["val/ce_head2"][0])
    assert 0 <= row["pass@1"][0] <= 1 and 0 <= row["pass@2"][0] <= 1
    assert row["tokens_to/val/ce<=100"][0] > 0  # crossed at the first validation
    assert row["perf/tokens_per_s"][0] > 0
    for method in ("critic_cl_shuffled", "rho1_topk"):
        share = report.table[method]["decisive/mass_share"][0]
        assert 0 <= share <= 1, method
    assert 0 <= report.table["critic_cl_shuffled"]["val/critic_auc"][0] <= 1
    assert report.families and all(f"pass@1/{f}" in report.family_table["mtp"] for f in report.families)
    text = results.read_text()
    assert "wmtp study --spec smoke.yaml" in text and "| mtp |" in text and "ties" in text
    assert (results.parent / "results_smoke.png").stat().st_size > 1000
    # one MLflow parent run with a child per run
    client = mlflow_sqlite.client()
    runs = client.search_runs(client.get_experiment_by_name("wmtp").experiment_id)
    parent = [r for r in runs if r.info.run_name == "study-smoke"]
    assert len(parent) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(children) == 3
    # the invocation's own record (wall time, what it trained): `--report-only` rewrites the same file
    assert "3 run(s) trained and measured" in text and "stage(s) `critic`, `ref_tuning` trained" in text
    from wmtp.orchestration.study import report_only

    regenerated = tmp_path / "again" / "RESULTS.md"
    report_only(spec, output_dir=str(tmp_path / "runs"), results=str(regenerated))
    assert regenerated.read_text() == text
    # a rerun reuses the stages and the measured runs (resumable): same numbers, no training
    again = run_study(spec, output_dir=str(tmp_path / "runs"), results=str(regenerated), log=lambda s: None)
    assert again.table["mtp"]["pass@1"] == report.table["mtp"]["pass@1"]
    rerun = regenerated.read_text()
    assert "0 run(s) trained and measured" in rerun and "3 run(s) measured by an earlier launch and reused" in rerun
    assert rerun.split("## Table", 1)[1] == text.split("## Table", 1)[1]


@pytest.mark.slow
@pytest.mark.ray
def test_full_micro_study(tmp_path):
    """The whole shipped micro study (about an hour on a busy 2-core box: configs/study.micro.yaml), from nothing."""
    import subprocess
    import sys

    results = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, "-m", "wmtp", "study", "--spec", str(MICRO), "--output-dir",
                           str(tmp_path / "runs"), "--results", str(results)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = load_study_spec(MICRO)
    text = results.read_text()
    for method in spec.methods:
        assert f"| {method} |" in text
    assert f"n={len(spec.seeds)}" in text and "missing runs" not in text.lower()

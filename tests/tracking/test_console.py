"""The console: progress lines, validation lines, the summary block and file, MLflow end states."""

from __future__ import annotations

import io
import json

import pytest

from wmtp.tracking.console import RunConsole, end_run, format_summary, status_of, tell
from wmtp.tracking.phases import add_phase, phase_seconds, reset_phases, timed
from wmtp.tracking.registry import build_logger


def _console(tmp_path, total=100, **kw):
    now = [100.0]
    buf = io.StringIO()
    con = RunConsole(total, run_name="demo", run_dir=tmp_path / "demo", recipe="baseline", stream=buf,
                     show_bar=False, clock=lambda: now[0], **kw)
    return con, buf, now


def test_progress_lines_each_quarter_with_eta_and_no_placeholders(tmp_path):
    con, buf, now = _console(tmp_path)
    for step in range(10, 101, 10):
        now[0] += 20.0  # 2 s per step
        con.log_metrics({"train/loss": 1.0 / step, "perf/tokens_per_s": 1234.0}, step)
        if step == 50:
            con.log_metrics({"val/ce": 2.5, "val/ce_head1": 2.5}, step)
    lines = buf.getvalue().splitlines()
    progress = [ln for ln in lines if " step " in ln and "validation" not in ln]
    assert [ln.split()[2] for ln in progress] == ["10/100", "30/100", "50/100", "80/100", "100/100"]
    assert "loss 0.0333" in progress[1] and "tok/s 1234" in progress[1] and "eta 0:02:20" in progress[1]
    assert "val/ce" not in progress[1] and "val/ce 2.5000" in progress[3]  # shown once measured
    assert "eta" not in progress[-1]
    assert lines.count("[demo] validation @ step 50: val/ce 2.5000") == 1  # same step as a train line
    assert "inf" not in buf.getvalue()


def test_bar_on_a_terminal_starts_at_the_resumed_step(tmp_path):
    con = RunConsole(100, run_name="demo", run_dir=tmp_path, stream=io.StringIO(), show_bar=True)
    con.log_metrics({"train/loss": 1.0}, 60)
    assert con._bar.initial == 60 and con._bar.n == 60
    con.log_metrics({"train/loss": 1.0}, 70)
    assert con._bar.n == 70
    con.close()


def test_phases_accumulate_and_reset():
    reset_phases()
    with timed("export"):
        pass
    add_phase("export", 1.0)
    assert 1.0 <= phase_seconds()["export"] < 1.5
    reset_phases()
    assert phase_seconds() == {}


def test_summary_block_and_file(tmp_path):
    con, buf, now = _console(tmp_path, total=20)
    run = tmp_path / "demo"
    (run / "export").mkdir(parents=True)
    (run / "export" / "params.json").write_text("{}")
    (run / "config.yaml").write_text("recipe: baseline\n")
    for step in (10, 20):
        (run / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_000020")
    (run / "mlflow_run.json").write_text(json.dumps(
        {"run_id": "abc", "experiment_id": "3", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}))
    con.log_metrics({"train/loss": 3.0}, 10)
    con.log_metrics({"val/ce": 2.0}, 10)
    con.log_metrics({"train/loss": 1.5}, 20)
    con.log_metrics({"val/ce": 2.2}, 20)
    con.add_phases({"setup": 2.0, "loop": 10.0, "validation": 1.0, "checkpoints": 0.5, "export": 0.25})
    now[0] += 14.0
    summary = con.finish("FINISHED", resume_command="wmtp train --recipe r.yaml")
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["status"] == "FINISHED" and summary["wall_s"] == 14.0
    assert summary["phases_s"] == {"setup": 2.0, "steps": 8.5, "validation": 1.0, "checkpoints": 0.5, "export": 0.25}
    assert summary["best"] == {"metric": "val/ce", "value": 2.0, "step": 10}
    assert summary["final"]["val/ce"] == 2.2 and summary["final"]["train/loss"] == 1.5
    assert summary["paths"]["checkpoint"].endswith("checkpoints/step_000020")
    assert summary["mlflow"]["ui_url"] == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert summary["next"]["eval"].startswith("wmtp eval --checkpoint ")
    assert summary["next"]["mlflow_ui"] == f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db"
    text = buf.getvalue()
    block = text[text.index("== demo: FINISHED"):].splitlines()
    assert block[0].startswith("== demo: FINISHED at step 20/20 in 14.0s")
    assert block[1] == "time      setup 2.0s  steps 8.5s  validation 1.0s  checkpoints 0.5s  export 0.2s"
    assert block[-1].startswith("  wmtp train --recipe r.yaml    # rerun")
    assert len(block) <= 14


def test_failed_summary_names_the_last_good_checkpoint(tmp_path):
    con, buf, _ = _console(tmp_path, total=20)
    ray_root = tmp_path / "ray" / "demo"
    for step in (10, 20):
        (ray_root / f"checkpoint_step{step:08d}").mkdir(parents=True)
    con.checkpoint_roots = [tmp_path / "demo" / "checkpoints", ray_root]
    con.log_metrics({"train/loss": 3.0}, 15)
    summary = con.finish("FAILED", "RuntimeError: boom")
    assert summary["paths"]["checkpoint"].endswith("checkpoint_step00000020")
    lines = format_summary(summary)
    assert "(RuntimeError: boom)" in lines[0]
    assert any(ln.startswith("last good checkpoint ") and ln.endswith("checkpoint_step00000020") for ln in lines)
    assert any("# resume" in ln for ln in lines)


def test_summary_shows_the_weight_diagnostics_and_critic_quality_on_their_own_lines(tmp_path):
    con, _, _ = _console(tmp_path, total=4)
    con.log_metrics({"train/loss": 3.0, "train/weights/ess": 0.516, "train/weights/position_spearman": 0.79,
                     "train/weights/quarter_1": 0.31, "train/weights/quarter_2": 0.6, "train/weights/quarter_3": 1.1,
                     "train/weights/quarter_4": 2.31}, 4)
    con.log_metrics({"val/ce": 2.5, "critic_quality/final_value_auc": 0.6, "critic_quality/decisive_td_auc": 0.54,
                     "critic_quality/solutions": 64.0}, 4)
    lines = format_summary(con.finish("FINISHED"))
    final = next(ln for ln in lines if ln.startswith("final "))
    assert "val/ce 2.5000" in final and "weights/" not in final
    assert "weights   ess 0.5160  spearman(position) 0.7900  mean by quarter 0.3100/0.6000/1.1000/2.3100" in lines
    assert ("critic    final-value AUC 0.6000 (0.5 = chance)  decisive TD-error AUC 0.5400 (0.5 = blind, low = sees "
            "the bug)  on 64 validation solutions") in lines


def test_tell_reaches_the_console_backend_else_prints(tmp_path, capsys):
    from wmtp.tracking.base import MultiLogger
    from wmtp.tracking.jsonl import JsonlLogger

    con, buf, _ = _console(tmp_path)
    tell(MultiLogger([JsonlLogger(tmp_path / "m.jsonl"), con]), "warning: the critic is near chance")
    assert "[demo] warning: the critic is near chance" in buf.getvalue()
    tell(JsonlLogger(tmp_path / "n.jsonl"), "no console here")
    assert "[wmtp] no console here" in capsys.readouterr().out


def test_status_of():
    assert status_of(None) == ("FINISHED", None)
    assert status_of(KeyboardInterrupt()) == ("KILLED", "interrupted (Ctrl-C)")
    assert status_of(KeyboardInterrupt("stopped by SIGTERM")) == ("KILLED", "stopped by SIGTERM")
    assert status_of(ValueError("bad\nmore")) == ("FAILED", "ValueError: bad")


@pytest.mark.parametrize("status,reason", [("FAILED", "RuntimeError: boom"), ("KILLED", "interrupted (Ctrl-C)"),
                                           ("FINISHED", None)])
def test_end_run_records_status_reason_and_summary_in_mlflow(mlflow_sqlite, tmp_path, status, reason):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "runs" / "demo"
    con = RunConsole(10, run_name="demo", run_dir=run_dir, stream=io.StringIO(), show_bar=False)
    logger = build_logger(["stdout", "mlflow"], run_dir=run_dir, run_name="demo", uri=mlflow_sqlite.uri,
                          console=con, tags={"wmtp.recipe": "baseline"})
    logger.log_params({"run.name": None, "optim.lr": 0.1})
    logger.log_metrics({"train/loss": 1.0}, 5)
    summary = end_run(logger, status, reason)
    assert summary["status"] == status and (run_dir / "summary.json").is_file()
    client = MlflowClient(mlflow_sqlite.uri)
    run = client.get_run(summary["mlflow"]["run_id"])
    assert run.info.status == status
    assert run.data.tags.get("wmtp.status_reason") == reason
    assert run.data.tags["wmtp.recipe"] == "baseline"
    assert run.data.params["run.name"] == "demo"
    assert "time/wall_s" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["summary.json"]
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_other_path_is_a_new_mlflow_run_and_the_same_path_resumes(mlflow_sqlite, tmp_path):
    from wmtp.tracking.registry import mlflow_run_id

    run_dir = tmp_path / "runs" / "demo"

    def attempt(path):
        lg = build_logger(["mlflow"], run_dir=run_dir, run_name="demo", uri=mlflow_sqlite.uri,
                          tags={"wmtp.path": path})
        rid = mlflow_run_id(lg)
        lg.close()
        return rid

    ray_run = attempt("ray")
    assert attempt("ray") == ray_run
    local_run = attempt("local")
    assert local_run != ray_run and attempt("local") == local_run


def test_verbose_flag_is_a_train_flag():
    from wmtp.cli import build_parser

    args = build_parser().parse_args(["train", "--recipe", "configs/recipe.baseline.yaml", "--verbose"])
    assert args.verbose is True


def test_trial_labels_show_sampled_values_first():
    from wmtp.tracking.registry import trial_label

    a = trial_label("4f2a1_00000", {"optim.lr": 0.0031234, "stage2.value_weighting.weight_temperature": 0.5})
    b = trial_label("4f2a1_00001", {"optim.lr": 0.1, "stage2.value_weighting.weight_temperature": 2.0})
    assert a == "lr=0.00312 weight_temperature=0.5 #00000"
    assert a[:12] != b[:12]


def test_a_resumed_run_counts_from_its_checkpoint_step(tmp_path):
    buf = io.StringIO()
    con = RunConsole(4, run_name="demo", run_dir=tmp_path, stream=buf, show_bar=False)
    con.resumed(4, "/storage/demo/checkpoint_step00000004")
    assert "[demo] resuming from /storage/demo/checkpoint_step00000004 (step 4/4)" in buf.getvalue()
    assert con.summary("FINISHED")["step"] == 4  # nothing left to train: not "step 0/4"

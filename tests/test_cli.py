"""The command line: the original system's form, subcommands, dry runs, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from wmtp.cli import build_parser, is_user_error, main
from wmtp.config.loader import REPO_ROOT, load_config, load_config_text

RECIPES = ["baseline", "ref_tuning", "critic", "verifiable", "rho1_weighted"]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def base_args(recipe: str, *extra: str) -> list[str]:
    return ["--config", "configs/defaults.yaml", "--recipe", f"configs/recipe.{recipe}.yaml", *extra]


@pytest.mark.parametrize("recipe", RECIPES)
def test_dry_run_local_light_micro(capsys, recipe):
    code, out, err = run_main(capsys, *base_args(recipe, "--preset", "local-light", "--use-micro-model", "--dry-run"))
    assert code == 0, err
    printed = load_config_text(out.split("# --- dry-run plan")[0])
    assert printed == load_config("configs/defaults.yaml", f"configs/recipe.{recipe}.yaml", "local-light", True)
    assert "model built on: cpu" in out and "policy parameters: 1,958,592" in out
    assert "#   head 1: 393,600" in out
    assert ("critic parameters:" in out) == (recipe in ("critic", "verifiable"))
    assert "tokens per optimizer step (at data.max_seq_len): 4,096" in out  # 16 × 128 × 1 × 2 workers
    assert "workers: 2" in out and "gpus_per_worker: 0" in out and "training FLOPs per token" in out


@pytest.mark.parametrize("recipe", RECIPES)
def test_dry_run_a100x4_builds_on_meta(capsys, recipe):
    code, out, err = run_main(capsys, *base_args(recipe, "--preset", "a100x4", "--dry-run"))
    assert code == 0, err
    assert "model built on: meta" in out
    heads = [line for line in out.splitlines() if line.startswith("#   head ")]
    assert len(heads) == (1 if recipe == "ref_tuning" else 4)
    assert "workers: 4" in out and "gpus_per_worker: 1" in out and "total_gpus: 4" in out
    total = float(next(line for line in out.splitlines() if line.startswith("#   total:")).split(":")[1])
    # Every recipe fits an 80 GB A100 with 10% headroom (the traced check is tests/parallel/test_trace.py's).
    assert 10 < total < 72, total


def test_dry_run_memory_terms_add_up(capsys):
    code, out, _ = run_main(capsys, "--recipe", "verifiable", "--preset", "a100x4", "--dry-run",
                            "stage2.critic_sync_interval=4", "orchestration.placement=async")
    assert code == 0
    block = out.split("estimated memory per GPU (GiB):\n")[1].split("# training FLOPs")[0]
    terms = {k.strip("# ").strip(): float(v) for k, v in (line.split(":") for line in block.splitlines())}
    assert {"params", "grads", "optimizer", "activations", "critic_snapshot", "publish_gather", "total"} <= set(terms)
    # The snapshot: the 6.00B critic in bf16, sharded over 4 GPUs; the publish: one bf16 embedding.
    assert abs(terms["critic_snapshot"] - 6_000_197_633 * 2 / 4 / 2**30) < 0.01
    assert abs(terms["publish_gather"] - 32000 * 4096 * 2 / 2**30) < 0.01
    # Resident state + the larger of the step's transients and the critic publish after the step.
    resident = terms["params"] + terms["optimizer"] + terms["critic_snapshot"]
    step = terms["grads"] + terms["activations"] + terms["transient"]
    assert abs(resident + max(step, terms["publish_gather"]) - terms["total"]) < 0.05
    # Policy (6.74B) + critic (6.00B) fp32 master weights sharded over 4 GPUs.
    assert abs(terms["params"] - (6_738_415_616 + 6_000_197_633) * 4 / 4 / 2**30) < 0.01


def test_dry_run_trains_nothing_and_starts_no_ray(tmp_path):
    code = ("import sys; from wmtp.cli import main; rc = main(['--recipe', 'verifiable', '--preset', "
            f"'local-light', '--dry-run', 'run.output_dir={tmp_path}/runs']); "
            "ray = sys.modules.get('ray'); assert ray is None or not ray.is_initialized(), 'ray started'; "
            "assert 'mlflow' not in sys.modules, 'mlflow imported'; sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WMTP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_train_subcommand_is_the_same_as_no_subcommand(capsys):
    a = run_main(capsys, "train", "--recipe", "baseline", "--preset", "local-light", "--dry-run")
    b = run_main(capsys, "--recipe", "baseline", "--preset", "local-light", "--dry-run")
    assert a[0] == b[0] == 0 and a[1] == b[1]


def test_local_flag_turns_ray_off(capsys):
    code, out, _ = run_main(capsys, "train", "--recipe", "baseline", "--local", "--dry-run")
    assert code == 0 and "orchestration: {enabled: false" in out and "no Ray" in out


def test_unknown_override_exits_2_naming_key(capsys):
    code, out, err = run_main(capsys, *base_args("verifiable", "--dry-run", "foo.bar=1"))
    assert code == 2 and out == ""
    assert "unknown key foo.bar" in err and "Traceback" not in err


def test_bad_literal_lists_allowed_values(capsys):
    code, _, err = run_main(capsys, *base_args("verifiable", "--dry-run",
                                               "stage2.value_weighting.td_error_normalization=max"))
    assert code == 2
    assert "stage2.value_weighting.td_error_normalization" in err and "'zscore', 'ema', 'none'" in err


def test_yaml_syntax_error_exits_2_with_file_line(capsys, tmp_path):
    bad = tmp_path / "recipe.bad.yaml"
    bad.write_text("recipe: baseline\ntrain:\n  steps: {\n")
    code, _, err = run_main(capsys, "--recipe", str(bad), "--dry-run")
    assert code == 2 and f"{bad}:4:" in err and "YAML syntax error" in err and "Traceback" not in err


def test_missing_local_file_named_by_the_config_exits_2(capsys, tmp_path):
    code, _, err = run_main(capsys, "--recipe", "baseline", "--dry-run", f"data.train={tmp_path}/none.jsonl")
    assert code == 2 and "data.train" in err and "does not exist" in err


def test_config_show_round_trips(capsys):
    code, out, _ = run_main(capsys, "config", "show", "--recipe", "rho1_weighted", "--preset", "a100x4",
                            "rho1.ratio=0.4", "tracking.backends=[stdout]")
    assert code == 0
    shown = load_config_text(out)
    assert shown == load_config("configs/defaults.yaml", "rho1_weighted", "a100x4",
                                overrides=["rho1.ratio=0.4", "tracking.backends=[stdout]"])
    assert yaml.safe_load(out)["rho1"]["ratio"] == 0.4


def test_config_validate(capsys):
    assert run_main(capsys, "config", "validate", "--recipe", "critic")[0] == 0
    code, _, err = run_main(capsys, "config", "validate", "--recipe", "critic", "critic.loss=hinge")
    assert code == 2 and "critic.loss" in err and "'mc_mse', 'lambda_return', 'pairwise'" in err


def test_usage_errors_exit_2(capsys):
    assert run_main(capsys, "--no-such-flag")[0] == 2
    assert run_main(capsys, "config")[0] == 2
    assert run_main(capsys, "--help")[0] == 0


def test_other_teams_commands_are_registered_when_present():
    parser = build_parser()
    choices = set(parser._subparsers._group_actions[0].choices)
    assert {"train", "config"} <= choices
    for module, command in (("wmtp.data.commands", "data"), ("wmtp.evaluation.commands", "eval"),
                            ("wmtp.orchestration.commands", "tune")):
        if (REPO_ROOT / (module.replace(".", "/") + ".py")).exists():
            assert command in choices, f"{module} exists but `{command}` is not registered"


def test_user_error_classification():
    """One base (wmtp.errors.WMTPUserError) for every user error; anything else is a bug."""
    from wmtp.checkpoint import CheckpointDamaged, CheckpointError, ModelIdentityError
    from wmtp.config.loader import ConfigError
    from wmtp.data.errors import DataError
    from wmtp.errors import WMTPUserError
    from wmtp.evaluation.benchmarks import BenchmarkError
    from wmtp.evaluation.commands import UsageError
    from wmtp.orchestration.resources import UnschedulableError
    from wmtp.recipes.chain import MissingInputError
    from wmtp.storage.errors import StorageError
    from wmtp.training.nonfinite import NonFiniteLossError
    from wmtp.training.runlock import RunLocked

    class Mine(WMTPUserError):
        pass

    for cls in (Mine, ConfigError, DataError, BenchmarkError, UsageError, CheckpointError, ModelIdentityError,
                UnschedulableError, CheckpointDamaged, MissingInputError, StorageError, NonFiniteLossError,
                RunLocked):
        assert is_user_error(cls("x")), cls
    assert issubclass(ConfigError, ValueError) and issubclass(StorageError, RuntimeError)  # still catchable as before
    assert not is_user_error(RuntimeError("bug")) and not is_user_error(KeyError("bug"))


def test_python_dash_m_entry_point(tmp_path):
    """One real subprocess: `python -m wmtp` from another directory, the original form."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "wmtp", "--config", "configs/defaults.yaml", "--recipe",
           "configs/recipe.verifiable.yaml", "--preset", "local-light", "--use-micro-model", "--dry-run"]
    ok = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "recipe: verifiable" in ok.stdout and "dry-run plan" in ok.stdout
    assert "ray" not in ok.stderr.lower()
    bad = subprocess.run([*cmd, "foo.bar=1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "foo.bar" in bad.stderr and "Traceback" not in bad.stderr


def test_an_interrupt_before_the_run_starts_is_one_line(monkeypatch, capsys):
    """Ctrl-C or `ray job stop` while the driver still imports: exit 130 and one line, no traceback."""
    import wmtp.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt("stopped by SIGTERM (e.g. ray job stop)")

    monkeypatch.setattr(cli, "run_train", interrupted)
    assert cli.main(["train", "--local"]) == 130
    err = capsys.readouterr().err
    assert "wmtp: stopped by SIGTERM (e.g. ray job stop) before the run started" in err and "Traceback" not in err

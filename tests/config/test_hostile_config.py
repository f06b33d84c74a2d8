"""Hostile configuration: values that used to be coerced into another meaning, non-finite numbers,
config paths that are not text files, params.json fields of the wrong type, a setup() failure
hidden by close(), and a failed run overwriting an earlier run's config.yaml. Every user error
exits 2 with one line naming the key or file, no traceback."""

from __future__ import annotations

import json

import pytest

from wmtp.cli import main
from wmtp.config.loader import ConfigError, load_config


@pytest.mark.parametrize("override, message", [
    ("train.steps=true", r"train.steps: Input should be a valid integer \(got True\)"),
    ("train.steps='3'", r"train.steps: Input should be a valid integer \(got '3'\)"),
    ("run.seed=1.5", r"run.seed: Input should be a valid integer \(got 1.5\)"),
    ("train.activation_checkpointing=1", r"train.activation_checkpointing: Input should be a valid boolean"),
    ("optim.lr=true", r"optim.lr: Input should be a valid number"),
    ("optim.lr=.nan", r"optim.lr: Input should be a finite number \(got nan\)"),
    ("optim.critic_lr=.inf", r"optim.critic_lr: Input should be a finite number \(got inf\)"),
    ("optim.betas=[0.9,.nan]", r"optim.betas.1: Input should be a finite number"),
    ("optim.grad_clip=-1", r"optim.grad_clip: Input should be greater than 0"),
    ("stage2.value_weighting.gae_gamma=.nan", r"gae_gamma: Input should be a finite number"),
    ("model.params.dim=true", r"model.params: dim: expected an integer, got True"),
    ("model.params.dim='32'", r"model.params: dim: expected an integer, got '32'"),
    ("model.params.rope_theta=.inf", r"model.params: rope_theta: expected a finite number > 0, got inf"),
])
def test_no_meaning_changing_coercion_and_no_non_finite_numbers(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_ints_still_serve_as_floats_and_lists_as_betas():
    cfg = load_config(overrides=["optim.lr=1", "optim.betas=[0.8,0.9]"])
    assert cfg.optim.lr == 1.0 and cfg.optim.betas == (0.8, 0.9)


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "binary.yaml").write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe" * 20)
    (tmp_path / "nul.yaml").write_bytes(b"train:\n  steps: 3\x00\n")
    return tmp_path


@pytest.mark.parametrize("flag", ["--config", "--recipe", "--preset"])
@pytest.mark.parametrize("name, message", [
    ("dir.yaml", "not a regular file"), ("binary.yaml", "not a text file"), ("nul.yaml", "not a text file"),
])
def test_config_paths_that_are_not_text_files(bad_files, capsys, flag, name, message):
    code = main(["config", "validate", flag, str(bad_files / name)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wmtp: error: {bad_files / name}: {message}")


def test_params_json_field_of_the_wrong_type_names_the_key(tmp_path, tiny_model):
    from wmtp.checkpoint import CheckpointError, load_model, save_model

    folder = save_model(tiny_model, tmp_path / "w")
    params = json.loads((folder / "params.json").read_text())
    for key, value in (("dim", "32"), ("n_heads", True), ("rope_theta", "1e4"), ("n_kv_heads", 2.0)):
        (folder / "params.json").write_text(json.dumps({**params, key: value}))
        with pytest.raises(CheckpointError, match=rf"params.json: {key}: expected"):
            load_model(folder)


TINY_RUN = ["--local", "--recipe", "verifiable", "--preset", "local-light", "tracking.backends=[jsonl]",
            "data.synth_problems=200", "train.steps=1"]


def test_setup_failure_is_not_hidden_by_close_and_keeps_the_earlier_config(tmp_path, capsys):
    """A verifiable run whose setup fails (its critic checkpoint is no checkpoint) reports that
    error, not `AttributeError: ... 'scorer'` from close(), and leaves the config.yaml of the
    earlier run with the same name as it was."""
    run_dir = tmp_path / "runs" / "same-name"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("# the earlier run's config\n")
    not_a_checkpoint = tmp_path / "empty"
    not_a_checkpoint.mkdir()
    code = main(["train", *TINY_RUN, f"run.output_dir={tmp_path / 'runs'}", "run.name=same-name",
                 f"value_model.checkpoint={not_a_checkpoint}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "value-model checkpoint" in err and "scorer" not in err and "Traceback" not in err
    assert (run_dir / "config.yaml").read_text() == "# the earlier run's config\n"


def test_close_errors_after_a_failure_are_logged_not_raised(caplog):
    from wmtp.recipes.loop import close_all

    calls = []

    def broken():
        raise AttributeError("'Recipe' object has no attribute 'scorer'")

    close_all([broken, lambda: calls.append("logger")], failed=True)
    assert calls == ["logger"] and "no attribute 'scorer'" in caplog.text
    with pytest.raises(AttributeError):
        close_all([broken], failed=False)

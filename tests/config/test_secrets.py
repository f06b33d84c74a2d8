"""Credentials never reach config.yaml, its artifact, params, mlflow_run.json, console lines or
error messages, wherever they were given (tracking.uri userinfo, an override, the environment)."""

from __future__ import annotations

import json
import logging

import pytest

from wmtp.cli import main
from wmtp.config.loader import ConfigError, dump_config, flatten_config, load_config

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    return monkeypatch


def test_uri_userinfo_moves_to_mlflows_environment(clean_env):
    import os

    cfg = load_config(overrides=[f"tracking.uri=http://alice:{SECRET}@127.0.0.1:5000/mlflow"])
    assert cfg.tracking.uri == "http://127.0.0.1:5000/mlflow"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET
    for text in (dump_config(cfg), json.dumps(flatten_config(cfg)), repr(cfg), json.dumps(cfg.model_dump())):
        assert SECRET not in text and "alice" not in text


def test_config_show_and_dry_run_print_no_credentials(clean_env, capsys):
    for argv in (["config", "show"], ["train", "--dry-run", "--local"]):
        assert main([*argv, f"tracking.uri=https://bob:{SECRET}@mlflow.example:443"]) == 0
        out = capsys.readouterr()
        assert SECRET not in out.out + out.err and "bob" not in out.out + out.err


def test_secret_looking_values_elsewhere_are_redacted_in_config_yaml():
    cfg = load_config(overrides=[f"model.checkpoint=s3://AKIAABCDEFGHIJKLMNOP:{SECRET}@bucket/ckpt"])
    text = dump_config(cfg)
    assert SECRET not in text and "AKIAABCDEFGHIJKLMNOP" not in text and "checkpoint: <redacted>" in text


@pytest.mark.parametrize("override", [
    f"tracking.password={SECRET}",         # unknown key, secret-looking name
    f"tracking.token={SECRET}",
    f"tracking.experiment=[{SECRET}",      # YAML syntax error in a... plain value
    f"tracking.api_key={{a: {SECRET}}}",
    f"run.name=http://u:{SECRET}@h",       # secret-looking value (run.name is a string: valid!)
])
def test_errors_never_echo_a_secret(override, capsys):
    code = main(["config", "validate", override])
    out = capsys.readouterr()
    if "experiment" in override:  # not secret-looking: a syntax error may show the text
        assert code == 2
        return
    assert SECRET not in out.out + out.err, out
    if "run.name" not in override:
        assert code == 2 and "<redacted>" in out.err


def test_redacted_run_record_still_resumes_and_redact_text_masks_userinfo(tmp_path, caplog):
    from wmtp.tracking.mlflow_logger import MlflowLogger

    db = tmp_path / "mlflow.db"
    # A URI with userinfo handed to the logger directly (not through the config): the record and
    # the log lines still hold no credentials.
    uri = f"sqlite:///{db.as_posix()}"
    logger = MlflowLogger(tmp_path / "run", run_name="r", uri=uri)
    logger.close()
    caplog.set_level(logging.INFO)
    from wmtp.config.redaction import redact_text

    assert redact_text(f"http://alice:{SECRET}@h:5000") == "http://<redacted>@h:5000"
    record = (tmp_path / "run" / "mlflow_run.json").read_text()
    assert SECRET not in record
    again = MlflowLogger(tmp_path / "run", run_name="r", uri=uri)  # resumes: the record still matches
    assert again.resumed
    again.close()


def test_unknown_key_error_names_the_key_not_the_value(capsys):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"tracking.secret_key={SECRET}"])
    assert "tracking.secret_key" in str(e.value) and SECRET not in str(e.value)


def test_a_pasted_redacted_uri_keeps_the_environments_credentials(clean_env):
    """The summary's resume command shows `http://<redacted>@host`: pasted back, it uses the
    credentials already in the environment instead of a user named `<redacted>`."""
    import os

    clean_env.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    clean_env.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    cfg = load_config(overrides=["tracking.uri=http://<redacted>@127.0.0.1:5000"])
    assert cfg.tracking.uri == "http://127.0.0.1:5000"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET

"""The summary's rerun command repeats the form the user ran: `wmtp ...` as typed, or a
`ray job submit` line with the next submission id when the driver is a submitted job."""

from __future__ import annotations

import json
import shlex

from wmtp.tracking.rerun import command_line, next_submission_id

ARGS = ["train", "--recipe", "configs/recipe.verifiable.yaml", "--preset", "local-light", "run.name=a b"]


def _job_env(metadata: dict[str, str], url: str = "http://127.0.0.1:8265") -> dict[str, str]:
    # What Ray's job supervisor puts in the driver's environment (job_supervisor._get_driver_env_vars).
    return {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"},
                                                       "metadata": metadata}),
            "WMTP_DASHBOARD_URL": url}


def test_plain_runs_repeat_the_wmtp_command():
    assert command_line(["/x/.venv/bin/wmtp", *ARGS], {}) == \
        "wmtp train --recipe configs/recipe.verifiable.yaml --preset local-light 'run.name=a b'"
    assert command_line(["/x/wmtp/__main__.py", *ARGS], {}).startswith("wmtp train ")


def test_a_submitted_job_repeats_ray_job_submit_with_a_new_id(tmp_path, monkeypatch):
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "runtime_env.yaml").write_text("env_vars: {}\n")
    monkeypatch.chdir(tmp_path)  # the job's working dir holds the shipped runtime env
    env = _job_env({"job_submission_id": "verifiable-1", "job_name": "verifiable-local-light"},
                   "http://127.0.0.1:9999")
    line = command_line(["/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_x/wmtp/__main__.py",
                         *ARGS], env)
    assert shlex.split(line) == [
        "ray", "job", "submit", "--address", "http://127.0.0.1:9999", "--submission-id", "verifiable-2",
        "--metadata-json", '{"job_name": "verifiable-local-light"}', "--runtime-env", "cluster/runtime_env.yaml",
        "--working-dir", ".", "--", "python", "-m", "wmtp", *ARGS]


def test_ray_default_metadata_is_not_repeated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no cluster/runtime_env.yaml here: no --runtime-env
    env = _job_env({"job_submission_id": "raysubmit_abc", "job_name": "raysubmit_abc"})
    line = command_line(["/p/wmtp/__main__.py", "train"], env)
    assert line == ("ray job submit --address http://127.0.0.1:8265 --submission-id raysubmit_abc-2 "
                    "--working-dir . -- python -m wmtp train")


def test_a_driver_that_joined_without_a_submission_is_a_plain_command():
    env = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"metadata": {"job_name": "x"}})}
    assert command_line(["/x/bin/wmtp", "train"], env) == "wmtp train"


def test_next_submission_ids():
    assert next_submission_id("verifiable-1") == "verifiable-2"
    assert next_submission_id("sweep-09") == "sweep-10"
    assert next_submission_id("job") == "job-2"

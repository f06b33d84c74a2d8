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


def test_the_next_submit_captures_the_commit_again(tmp_path, monkeypatch):
    """A job submitted with `"git_commit": "$(git rev-parse HEAD)"` (docs/CLUSTER.md) is resubmitted
    with the same capture, not with the old job's commit."""
    import subprocess

    monkeypatch.chdir(tmp_path)
    env = _job_env({"job_submission_id": "v-1", "job_name": "v", "git_commit": "0123abc"})
    line = command_line(["/p/wmtp/__main__.py", "train"], env)
    assert '--metadata-json "{\\"job_name\\": \\"v\\", \\"git_commit\\": \\"$(git rev-parse HEAD)\\"}"' in line
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    # What the shell makes of the argument: the current checkout's commit.
    word = line.split("--metadata-json ", 1)[1].split(" --working-dir", 1)[0]
    out = subprocess.run(["bash", "-c", f"printf %s {word}"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert json.loads(out) == {"job_name": "v", "git_commit": head}


def test_git_commit_of_a_job_comes_from_its_metadata(tmp_path, monkeypatch):
    from wmtp.tracking.registry import git_commit

    monkeypatch.delenv("WMTP_GIT_COMMIT", raising=False)
    for key, value in _job_env({"job_submission_id": "v-1", "git_commit": "feedbeef"}).items():
        monkeypatch.setenv(key, value)
    assert git_commit(tmp_path) == "feedbeef"  # no checkout here: the submit side's capture
    monkeypatch.setenv("WMTP_GIT_COMMIT", "c0ffee")  # a worker, given it by its driver
    assert git_commit(tmp_path) == "c0ffee"


def test_mlflow_title_says_recipe_and_preset():
    from wmtp.config.loader import load_config
    from wmtp.tracking.registry import run_title

    base = ("configs/defaults.yaml", "configs/recipe.verifiable.yaml", "local-light")
    assert run_title(load_config(*base)) == "verifiable-local-light"
    assert run_title(load_config(*base, overrides=["run.name=my-try"])) == "my-try (verifiable, local-light)"

"""The command that runs this process again, in the form the user ran it (the summary's `next:`).

    command_line() -> str     `wmtp train ...` as typed; inside a `ray job submit` job, a
                              `ray job submit` line with a new submission id around it

A submitted job's driver finds its job in `RAY_JOB_CONFIG_JSON_ENV_VAR` (set by Ray's job
supervisor: the job's runtime_env and metadata, the submission id among it). The dashboard
address is `WMTP_DASHBOARD_URL` (set by wmtp's driver when it joins the cluster), else Ray's
default. The runtime env is the shipped `cluster/runtime_env.yaml` when the working dir has it
(the documented form): the runtime_env the job ran with is not repeated (it may hold secrets).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

JOB_CONFIG_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # ray._private.runtime_env.constants
DASHBOARD_ENV_VAR = "WMTP_DASHBOARD_URL"
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
SHIPPED_RUNTIME_ENV = "cluster/runtime_env.yaml"


def command_line(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> str:
    """This process's command, ready to paste (`wmtp ...` for the console script and `-m wmtp`;
    wrapped in `ray job submit` with the next submission id inside a submitted job)."""
    argv = list(sys.argv if argv is None else argv)
    environ = dict(os.environ if environ is None else environ)
    args = [shlex.quote(a) for a in argv[1:]]
    main = bool(argv) and Path(argv[0]).name == "__main__.py"
    metadata = submitted_job_metadata(environ)
    if metadata is None:
        head = "wmtp" if argv and (main or Path(argv[0]).name == "wmtp") else shlex.join(argv[:1])
        return " ".join([head, *args])
    head = "python -m wmtp" if main or not argv else shlex.join(argv[:1])
    job_id = metadata.get("job_submission_id", "")
    extra = {k: v for k, v in metadata.items()
             if k != "job_submission_id" and not (k == "job_name" and v == job_id)}
    parts = ["ray job submit", "--address", environ.get(DASHBOARD_ENV_VAR) or DEFAULT_DASHBOARD]
    if job_id:
        parts += ["--submission-id", shlex.quote(next_submission_id(job_id))]
    if extra:
        parts += ["--metadata-json", metadata_argument(extra)]
    if Path(SHIPPED_RUNTIME_ENV).is_file():
        parts += ["--runtime-env", SHIPPED_RUNTIME_ENV]
    parts += ["--working-dir", ".", "--", head, *args]
    return " ".join(parts)


GIT_COMMIT_KEY = "git_commit"  # `ray job submit --metadata-json '{"git_commit": ...}'` (docs/CLUSTER.md)
CAPTURE_COMMIT = "$(git rev-parse HEAD)"


def metadata_argument(metadata: dict[str, str]) -> str:
    """`--metadata-json`'s shell word; a `git_commit` entry is captured again at the next submit
    (`"$(git rev-parse HEAD)"` inside double quotes), never the old job's commit."""
    if GIT_COMMIT_KEY not in metadata:
        return shlex.quote(json.dumps(metadata))
    marker = "@@git-commit@@"  # no character JSON or the shell escapes
    text = json.dumps({**metadata, GIT_COMMIT_KEY: marker})
    for char in ("\\", '"', "$", "`"):  # escaped inside a double-quoted shell word
        text = text.replace(char, "\\" + char)
    return '"' + text.replace(marker, CAPTURE_COMMIT) + '"'


def submitted_job_metadata(environ: dict[str, str]) -> dict[str, str] | None:
    """The job's metadata when this process is a `ray job submit` driver, else None."""
    raw = environ.get(JOB_CONFIG_ENV_VAR)
    if not raw:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return None
    return {str(k): str(v) for k, v in metadata.items()} if "job_submission_id" in metadata else None


def next_submission_id(job_id: str) -> str:
    """`verifiable-1` → `verifiable-2`; an id without a trailing number gets `-2` (ids are used once)."""
    found = re.fullmatch(r"(.*?)(\d+)", job_id)
    return f"{found.group(1)}{int(found.group(2)) + 1}" if found else f"{job_id}-2"


__all__ = ["command_line", "next_submission_id", "submitted_job_metadata"]

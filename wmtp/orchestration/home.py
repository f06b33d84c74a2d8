"""Where a run's outputs land when the config gives relative paths (one rule for train and tune).

    output_home() -> Path      WMTP_HOME; else ~/wmtp inside a `ray job submit` working dir; else cwd
    anchor_outputs(cfg) -> cfg run.output_dir, a local orchestration.storage_path and a relative
                               sqlite tracking.uri made absolute under output_home()
    check_inputs_where_workers_look(cfg)   inputs exist relative to the driver's folder (ConfigError)

`ray job submit --working-dir .` runs the driver in a temporary copy of the upload
(`<ray temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_*`), deleted with the session:
outputs resolved against it would vanish with `ray stop`. Inputs (data, tokenizer, checkpoints
given as relative paths) stay relative to the working dir: they travel with the upload.
"""

from __future__ import annotations

import os
from pathlib import Path

from wmtp.config.inputs import check_inputs
from wmtp.config.schema import WMTPConfig

HOME_ENV_VAR = "WMTP_HOME"
JOB_DEFAULT_HOME = "~/wmtp"
# Path component of Ray's unpacked working_dir / py_modules packages.
RAY_PACKAGE_MARKER = "runtime_resources"


def in_ray_package(path: Path) -> bool:
    return RAY_PACKAGE_MARKER in path.parts


def output_home() -> Path:
    """The folder relative output paths mean (module docstring)."""
    configured = os.environ.get(HOME_ENV_VAR)
    if configured:
        return Path(configured).expanduser().resolve()
    cwd = Path.cwd()
    if in_ray_package(cwd):
        return Path(JOB_DEFAULT_HOME).expanduser().resolve()
    return cwd


def check_inputs_where_workers_look(cfg: WMTPConfig) -> None:
    """Every local input exists relative to this process's folder, the one the workers chdir to
    (the job's working dir under `ray job submit`); the error names key, value and folder."""
    cwd = Path.cwd()
    where = ("the job's working dir (the `ray job submit --working-dir` upload; a file outside it needs a "
             "path that exists on every node, or an s3:// URI)") if in_ray_package(cwd) else "the current directory"
    check_inputs(cfg, cwd, where)


def _anchor(path: str, home: Path) -> str:
    return str((home / Path(path).expanduser()).resolve())


def anchor_outputs(cfg: WMTPConfig) -> WMTPConfig:
    """A copy of `cfg` whose output locations are absolute (workers may run in another folder)."""
    home = output_home()
    out = cfg.model_copy(deep=True)
    out.run.output_dir = _anchor(cfg.run.output_dir, home)
    storage = cfg.orchestration.storage_path
    if storage is not None and "://" not in storage:
        out.orchestration.storage_path = _anchor(storage, home)
    uri = cfg.tracking.uri
    if uri is not None and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        out.tracking.uri = "sqlite:///" + _anchor(uri.removeprefix("sqlite:///"), home)
    return out

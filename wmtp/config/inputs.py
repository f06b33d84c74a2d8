"""The run's input paths, checked where the workers will look before anything starts.

    input_paths(cfg) -> [(key, value)]       every set input: checkpoints, tokenizer, data files
    check_inputs(cfg, base, where) -> None   ConfigError naming key, value and `base` for a missing one

Ray Train workers chdir to the driver's folder (wmtp/orchestration/launch.py), so a relative input
means the same file for the driver and every worker: `base` is the driver's working directory
(for `ray job submit --working-dir .`, Ray's unpacked copy of the upload). Checking on the driver
turns a missing input from a worker traceback minutes later into exit 2 in seconds.
`s3://` (any `scheme://`) inputs are checked when they are pulled.
"""

from __future__ import annotations

from pathlib import Path

from wmtp.config.loader import ConfigError
from wmtp.config.schema import WMTPConfig


def input_paths(cfg: WMTPConfig) -> list[tuple[str, str]]:
    """(dotted key, value) of every input path the config sets."""
    pairs = (("model.checkpoint", cfg.model.checkpoint), ("model.tokenizer", cfg.model.tokenizer),
             ("value_model.checkpoint", cfg.value_model.checkpoint), ("rho1.reference", cfg.rho1.reference),
             ("data.train", cfg.data.train), ("data.valid", cfg.data.valid), ("data.test", cfg.data.test),
             ("data.reference_losses", cfg.data.reference_losses))
    return [(key, value) for key, value in pairs if value]


def check_inputs(cfg: WMTPConfig, base: Path | None = None, where: str = "the current directory") -> None:
    """Every local input of `cfg` exists, relative ones resolved against `base` (default: the cwd);
    `where` says what `base` is in the error (e.g. a `ray job submit` working dir)."""
    base = Path.cwd() if base is None else base
    for key, value in input_paths(cfg):
        if "://" in value:
            continue
        path = Path(value).expanduser()
        resolved = path if path.is_absolute() else base / path
        if not resolved.exists():
            shown = "" if path.is_absolute() else f" (resolved against {where}: {base})"
            raise ConfigError(f"{key}: {value!r} does not exist{shown}")


__all__ = ["check_inputs", "input_paths"]

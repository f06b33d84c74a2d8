"""Where a run lives on disk, derived from its config (one rule for every caller)."""

from __future__ import annotations

from pathlib import Path

from wmtp.config.schema import WMTPConfig


def run_name(cfg: WMTPConfig) -> str:
    """`run.name`, else `<recipe>-<preset>`; rerunning with the same name resumes."""
    return cfg.run.name or f"{cfg.recipe}-{cfg.run.preset or 'custom'}"


def run_dir(cfg: WMTPConfig) -> Path:
    return Path(cfg.run.output_dir) / run_name(cfg)


def export_dir(cfg: WMTPConfig) -> Path:
    """Where a producing recipe (ref_tuning, critic) leaves its model for the next stage."""
    return run_dir(cfg) / "export"


def write_resolved_config(cfg: WMTPConfig) -> Path:
    """Save the resolved config as `<run_dir>/config.yaml` (saved with every run; logged as an
    artifact by whoever runs it)."""
    from wmtp.config.loader import dump_config

    path = run_dir(cfg) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(cfg), encoding="utf-8")
    return path

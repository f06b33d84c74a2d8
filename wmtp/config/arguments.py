"""The config flags every `wmtp` command shares, and turning them into a `WMTPConfig`.

Other teams' subcommands (`wmtp data`, `wmtp eval`, `wmtp tune`) call `add_config_arguments`
on their parser and `config_from_args(args)` in their handler, so one layering rule holds
everywhere.
"""

from __future__ import annotations

import argparse

from wmtp.config.loader import load_config
from wmtp.config.schema import WMTPConfig

DEFAULT_CONFIG = "configs/defaults.yaml"


def add_config_arguments(parser: argparse.ArgumentParser, *, overrides: bool = True) -> None:
    """--config, --recipe, --preset, --use-micro-model, and trailing key.sub=value overrides."""
    group = parser.add_argument_group("configuration (layered: config → recipe → preset → flags → overrides)")
    group.add_argument("--config", default=DEFAULT_CONFIG, metavar="YAML",
                       help=f"defaults file (default: {DEFAULT_CONFIG}, looked up in the current directory, "
                            "then in the wmtp repository)")
    group.add_argument("--recipe", default=None, metavar="YAML|NAME",
                       help="recipe file or name: baseline, ref_tuning, critic, verifiable, rho1_weighted")
    group.add_argument("--preset", default=None, metavar="NAME|YAML",
                       help="preset name (configs/presets/<name>.yaml: local-light, a100x4) or a YAML path")
    group.add_argument("--use-micro-model", action="store_true", help="model.preset=micro (a CPU-sized model)")
    if overrides:
        group.add_argument("overrides", nargs="*", metavar="key.sub=value",
                           help="overrides typed as YAML: a=1 (int), a=0.1 (float), a=true, a=null, a=[1,2], a=text")


def config_from_args(args: argparse.Namespace, extra_overrides: list[str] | tuple[str, ...] = ()) -> WMTPConfig:
    """Resolve the layered config from parsed flags; `extra_overrides` apply before the user's."""
    return load_config(args.config, args.recipe, args.preset, args.use_micro_model,
                       [*extra_overrides, *getattr(args, "overrides", [])])


__all__ = ["add_config_arguments", "config_from_args", "DEFAULT_CONFIG"]

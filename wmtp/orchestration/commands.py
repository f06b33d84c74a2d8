"""CLI commands, the cluster layer; the same concept as each package's commands.py.

`wmtp tune`: registered on the CLI by `register(subparsers)` (ray is imported only when it runs)."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from wmtp.config.arguments import add_config_arguments

    tune = subparsers.add_parser(
        "tune", help="sweep weighting hyperparameters with Ray Tune + ASHA (one TorchTrainer per trial)",
        epilog="example: python -m wmtp tune --config configs/defaults.yaml --recipe configs/recipe.verifiable.yaml "
               "--preset local-light --use-micro-model --space tune_spaces/verifiable.yaml")
    tune.add_argument("--space", required=True, metavar="YAML", help="search space (tune_spaces/*.yaml)")
    tune.add_argument("--num-samples", type=int, default=None, metavar="N",
                      help="trials (default: the space's num_samples)")
    tune.add_argument("--verbose", action="store_true",
                      help="Ray Tune's own status tables and every Ray worker log line (default: one line per trial event)")
    add_config_arguments(tune)
    tune.set_defaults(func=run_tune_command)


def run_tune_command(args: argparse.Namespace) -> int:
    from wmtp.config.arguments import config_from_args
    from wmtp.config.loader import ConfigError
    from wmtp.config.tune import load_tune_space
    from wmtp.orchestration.home import check_inputs_where_workers_look

    if args.verbose:
        os.environ["WMTP_VERBOSE"] = "1"
    cfg = config_from_args(args)
    check_inputs_where_workers_look(cfg)  # before Ray starts: exit 2 in seconds
    space = load_tune_space(args.space)
    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
    from wmtp.orchestration.tune import run_tune

    try:
        summary = run_tune(cfg, space, num_samples=args.num_samples)
    except KeyboardInterrupt:  # a second Ctrl-C skips Tune's last save; the earlier state stays
        print("wmtp: tune interrupted; rerun the same command to resume the sweep", file=sys.stderr)
        return 130
    print(summary.format())
    return 130 if summary.interrupted else 0

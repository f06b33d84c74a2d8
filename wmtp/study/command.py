"""`wmtp study`: registered on the CLI by `register(subparsers)` (ray is imported only when it runs)."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser(
        "study", help="does weighting help? gated stages, then paired arms × seeds as one Ray Tune grid (docs/RESULTS.md)",
        epilog="example: python -m wmtp study --spec configs/study.micro.yaml")
    study.add_argument("--spec", required=True, metavar="YAML", help="study spec (configs/study.*.yaml)")
    study.add_argument("--dry-run", action="store_true",
                       help="resolve and check every run's config and print the grid; run nothing")
    study.add_argument("--output-dir", default=None, metavar="DIR", help="run.output_dir of every run")
    study.add_argument("--results", default="spec", metavar="MD",
                       help="where to write the report (default: the spec's `results`; 'none': do not write)")
    study.add_argument("--report-only", action="store_true",
                       help="rewrite the report from the stages and runs already measured (nothing trains)")
    study.set_defaults(func=run_study_command)


def run_study_command(args: argparse.Namespace) -> int:
    from wmtp.study.spec import load_study_spec

    spec = load_study_spec(args.spec)
    if args.dry_run:
        from wmtp.study.experiment import plan_study

        print(plan_study(spec, args.output_dir).format())
        return 0
    if args.report_only:
        from wmtp.study.experiment import report_only

        report = report_only(spec, output_dir=args.output_dir,
                             results=None if args.results == "none" else args.results,
                             command=f"wmtp study --spec {shlex.quote(args.spec)}")
        print(report.format())
        return 0
    from wmtp.study.experiment import run_study

    command = "wmtp " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["study"] else \
        f"wmtp study --spec {shlex.quote(args.spec)}"
    report = run_study(spec, output_dir=args.output_dir, results=None if args.results == "none" else args.results,
                       command=command)
    print(report.format())
    return 0

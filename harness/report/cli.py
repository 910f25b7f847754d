"""`python -m harness.report`: the command (its arguments and --help: harness.report.arguments;
what it builds: harness.report.build). Bad input exits 2, as the sweep and evaluate do."""

from __future__ import annotations

import sys

from harness.errors import SaesweepError
from harness.report.arguments import EXIT_BAD_INPUT, build_parser
from harness.report.build import build_report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = build_report(
            args.studies, storage=args.storage, results_dir=args.results, out=args.out,
            formats=[f.strip() for f in args.format.split(",") if f.strip()],
            metric=args.metric, group_by=[c.strip() for c in args.group_by.split(",")],
            wandb_mode=args.wandb, artifacts=args.artifacts)
    except SaesweepError as e:  # nothing to build from (a damaged study too), or a bad option
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"report for {', '.join(args.studies)} in {report.out_dir}/:")
    for path in report.files:
        print(f"  {path.name}")
    for note in report.notes:
        print(f"  note: {note}")
    return 0


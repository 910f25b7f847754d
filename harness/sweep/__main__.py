"""`python -m harness.sweep`: see harness.sweep.cli. The arguments are parsed before the command
is imported, so `--help` and a mistyped option answer at once."""

import sys

from harness.sweep.arguments import build_parser

build_parser().parse_args()

from harness.sweep.cli import main  # noqa: E402 - after the arguments, on purpose

sys.exit(main())

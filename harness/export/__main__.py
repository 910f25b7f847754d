"""`python -m harness.export`: see harness.export.cli. The arguments are parsed before the
command is imported, so `--help` and a mistyped option answer at once."""

import sys

from harness.export.arguments import build_parser

build_parser().parse_args()

from harness.export.cli import main  # noqa: E402 - after the arguments, on purpose

sys.exit(main())

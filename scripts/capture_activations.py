"""The same command as `python -m harness.capture` (kept so that older notes still run)."""

import sys

from harness.capture.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m harness.sweep`: see harness.sweep.cli."""

import sys

from harness.sweep.cli import main

sys.exit(main())

"""The cache of files derived from installed packages: dequantised GGUF models (models.py) and
the docstrings corpus read from the Python install (capture.py). `$SAESWEEP_CACHE`, else
~/.cache/saesweep. Anything in it can be deleted: it is made again on first use."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SAESWEEP_CACHE"
"""The environment variable that moves the cache."""


def cache_dir(kind: str) -> Path:
    """The cache's folder for `kind` ("models", "corpora"); not created here."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "saesweep"
    return Path(base) / kind

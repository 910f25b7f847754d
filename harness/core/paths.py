"""Whether a folder the user named can take files: checked before any work starts."""

from __future__ import annotations

import tempfile
from pathlib import Path


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written in `folder`, or None. A write-and-delete probe (permissions
    alone do not say it, e.g. for root or on a read-only mount) in the folder, or, when it does
    not exist yet, in the nearest folder above it that does, where it would be created: no
    folder is made, so nothing is left behind and no other process's new folder is touched."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{folder} cannot be created: {probe} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".saesweep-probe-"):
            pass
    except OSError as e:
        return f"{folder} is not writable ({e.strerror or e})"
    return None

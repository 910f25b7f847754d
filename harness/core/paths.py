"""Whether a folder the user named can take files: checked before any work starts."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written in `folder`, or None. A write-and-delete probe (permissions
    alone do not say it, e.g. for root or on a read-only mount); folders the probe had to create
    are removed again, so nothing is left behind."""
    created: list[Path] = []
    probe = folder
    while not probe.exists():
        created.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{folder} cannot be created: {probe} is not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".saesweep-probe-"):
            pass
    except OSError as e:
        return f"{folder} is not writable ({e.strerror or e})"
    finally:
        for made in created:  # innermost first
            with contextlib.suppress(OSError):
                made.rmdir()
    return None

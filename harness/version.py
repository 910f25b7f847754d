"""The installed saesweep version, recorded with every saved SAE and study."""

from __future__ import annotations


def saesweep_version() -> str:
    """The package's version, or "unknown" when running from a checkout that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("saesweep")
    except PackageNotFoundError:
        return "unknown"

"""The one error of a folder that is read but cannot be run exactly."""

from __future__ import annotations

from harness.errors import SaesweepError


class UnsupportedSae(SaesweepError, ValueError):
    """An SAE folder whose forward pass this harness cannot reproduce exactly; the message names
    the file, the field and its value."""

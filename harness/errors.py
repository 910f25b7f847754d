"""The one exception family: every error saesweep raises on bad input, an unusable file or a
machine that cannot hold the work derives from SaesweepError, and its message names the file,
key or value and what was expected. Every command exits 2 on one, before anything is written.

Most also derive from the built-in their callers caught before the family existed (ValueError,
OSError), so existing `except` clauses keep working."""

from __future__ import annotations


class SaesweepError(Exception):
    """Bad input, an unusable file, or a machine that cannot hold the work."""


class StorageError(SaesweepError):
    """A study storage that cannot be used (harness.sweep.storage)."""

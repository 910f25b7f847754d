"""Storage URLs: how to show one without its password (harness.sweep.storage decides a
URL's kind)."""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]*@")


def masked(url: str) -> str:
    """A storage URL fit to print or record: user:password@host becomes user:***@host."""
    return _PASSWORD.sub(r"\1***@", url)

"""Storage URLs: which kind a URL names, and how to show one without its password."""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]*@")


def is_rdb(url: str) -> bool:
    """An SQLAlchemy URL (sqlite://, postgresql://, ...) rather than a journal file."""
    return "://" in url and not url.startswith("journal://")


def masked(url: str) -> str:
    """A storage URL fit to print or record: user:password@host becomes user:***@host."""
    return _PASSWORD.sub(r"\1***@", url)

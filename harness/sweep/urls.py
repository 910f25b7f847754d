"""Storage URLs: how to show one without its credentials (harness.sweep.storage decides a
URL's kind)."""

from __future__ import annotations

import re

# user:password@ in the authority, up to its last "@" (a raw "@" inside a password included)
_PASSWORD = re.compile(r"(://[^:/@?#]+:)[^/?#]*@")
# a credential given as a query parameter (?password=..., &sslpassword=..., ?token=...)
_QUERY_SECRET = re.compile(r"([?&][^=&#]*(?:password|passwd|pwd|secret|token)[^=&#]*=)[^&#]*",
                           re.IGNORECASE)


def masked(url: str) -> str:
    """A storage URL fit to print or record: every credential it carries becomes ***
    (user:password@host, a password holding a raw "@", or a password query parameter)."""
    return _QUERY_SECRET.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))

"""Tokens kept in memory across the training runs of one process: a sweep worker reads a store
once and trains all its trials from that copy.

Off by default, so that a script training once frees its tokens when the run ends; a sweep
worker turns it on (`keep_tokens`). An entry is a split's training tokens or its held-out
evaluation tokens, on the host (pinned when a GPU trains, which is the slow part to redo),
keyed by the shard files (path, size, modification time: a rewritten store is read afresh)
and by every setting that changes which tokens it holds. The least recently used entries go
when the total would pass the byte budget.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

_entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
_budget_bytes = 0


def keep_tokens(max_bytes: int) -> None:
    """Keep up to `max_bytes` of tokens across runs in this process (0 = off, and forget)."""
    global _budget_bytes
    _budget_bytes = max(0, int(max_bytes))
    _evict()


def held_bytes() -> int:
    """Bytes of tokens kept now."""
    return sum(_nbytes(t) for t in _entries.values())


def cached(key_of: Callable[[], Hashable], build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor kept under `key_of()`, or `build()`'s (kept when the budget allows); off, the
    key is never computed (it reads the files' metadata)."""
    if not _budget_bytes:
        return build()
    key = key_of()
    if key in _entries:
        _entries.move_to_end(key)
        return _entries[key]
    tensor = build()
    if _nbytes(tensor) <= _budget_bytes:
        _entries[key] = tensor
        _evict()
    return tensor


def shard_files_key(paths: list[os.PathLike | str]) -> tuple:
    """Identifies the contents of the files at `paths`: each one's path, size and mtime."""
    key = []
    for path in paths:
        st = os.stat(path)
        key.append((os.fspath(path), st.st_size, st.st_mtime_ns))
    return tuple(key)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _evict() -> None:
    while _entries and (held_bytes() > _budget_bytes):
        _entries.popitem(last=False)

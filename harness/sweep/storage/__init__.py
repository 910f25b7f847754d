"""Study storages: one protocol (base.StorageKind), one registry (KINDS), and the one place a
URL's kind is decided (`storage_kind`).

A new kind is a file here with a class that follows StorageKind, and one line in KINDS, before
any kind whose `claims` would also take its URLs (docs/architecture.md).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from optuna.storages import BaseStorage, RDBStorage

from harness.sweep.storage.base import StorageKind
from harness.sweep.storage.journal import (
    JournalKind,
    journal_damage,
    journal_file,
    repair_torn_tail,
)
from harness.sweep.storage.postgres import PostgresKind
from harness.sweep.storage.rdb import RdbKind

if TYPE_CHECKING:
    from harness.sweep.space import FaultsSection

KINDS: dict[str, type[StorageKind]] = {
    PostgresKind.name: PostgresKind,
    RdbKind.name: RdbKind,
    JournalKind.name: JournalKind,
}
"""Kind name -> its class, in the order they are asked to claim a URL."""


def storage_kind(url: str) -> type[StorageKind]:
    """The kind of storage `url` names (the first in KINDS that claims it)."""
    for kind in KINDS.values():
        if kind.claims(url):
            return kind
    raise ValueError(f"no storage kind claims {url!r}")  # JournalKind claims every path


def open_storage(url: str, faults: FaultsSection | None = None) -> BaseStorage:
    """The Optuna storage `url` names: a journal file (a path, or journal:///path) or an RDB URL
    (sqlite://, postgresql://, ...); `faults` sets up an RDB's heartbeat leases."""
    return storage_kind(url).open(url, faults)


def storage_holds_anything(url: str) -> bool:
    """Whether the storage may hold studies already: a journal file that does not exist holds
    none (and opening it would create it); any other kind is asked."""
    kind = storage_kind(url)
    return kind is not JournalKind or journal_file(url).exists()


def storage_damage(url: str) -> str | None:
    """What makes a stored study unreadable, found without writing (a journal line that is not a
    record, with records after it), else None."""
    return journal_damage(journal_file(url)) if storage_kind(url) is JournalKind else None


def close_storage(storage: BaseStorage) -> None:
    """Close an RDB storage's pooled connections now, not whenever they are garbage-collected
    (a journal file holds none)."""
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()


def prepare_storage(url: str) -> str | None:
    """Check a storage before a sweep writes to it (StorageError says why it cannot be used);
    returns a line to print about a repair (a journal's torn last record), else None."""
    return storage_kind(url).check(url)


def budget_lock(url: str, storage: BaseStorage) -> AbstractContextManager[None]:
    """Serialises "check the budget, then ask for a trial" across every worker of a study."""
    return storage_kind(url).budget_lock(url, storage)


__all__ = ["KINDS", "StorageKind", "budget_lock", "close_storage", "open_storage",
           "prepare_storage", "repair_torn_tail", "storage_damage", "storage_holds_anything",
           "storage_kind"]

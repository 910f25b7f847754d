"""The study-storage protocol: one kind of Optuna storage, chosen by its URL."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, ClassVar, Protocol

from optuna.storages import BaseStorage

if TYPE_CHECKING:
    from harness.sweep.space import FaultsSection


class StorageKind(Protocol):
    """How one kind of study storage is recognised, opened, checked and locked."""

    name: ClassVar[str]
    """Its registry name."""
    url_based: ClassVar[bool]
    """Named by a URL that tools must be given (a server, a database), not a local file that a
    default location finds."""

    @staticmethod
    def claims(url: str) -> bool:
        """Whether `url` names a storage of this kind."""

    @staticmethod
    def open(url: str, faults: FaultsSection | None) -> BaseStorage:
        """The Optuna storage; with `faults`, set up the kind's own leases where it has them."""

    @staticmethod
    def check(url: str) -> str | None:
        """Before a sweep writes: raise StorageError when it cannot be used; return a line to
        print about anything repaired, else None."""

    @staticmethod
    def budget_lock(url: str, storage: BaseStorage) -> AbstractContextManager[None]:
        """A lock every worker of the study takes to check the budget and ask for a trial."""

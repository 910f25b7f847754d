"""PostgreSQL (postgresql://...): an RDB storage whose budget lock is an advisory lock, shared
by every node of the study."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

import joblib
from optuna.storages import BaseStorage, RDBStorage

from harness.sweep.storage.rdb import RdbKind


class PostgresKind(RdbKind):
    """postgresql:// and postgresql+driver:// URLs."""

    name: ClassVar[str] = "postgresql"

    @staticmethod
    def claims(url: str) -> bool:
        return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")

    @staticmethod
    @contextlib.contextmanager
    def budget_lock(url: str, storage: BaseStorage) -> Iterator[None]:
        assert isinstance(storage, RDBStorage)
        key = int(joblib.hash(url.rsplit("/", 1)[-1])[:15], 16)  # one lock per database
        with storage.engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")

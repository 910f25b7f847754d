"""An SQLAlchemy URL (sqlite:///file, mysql://...): Optuna's RDBStorage with its heartbeat."""

from __future__ import annotations

import time
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from harness.errors import StorageError
from harness.sweep.storage.locks import file_lock, no_lock
from harness.sweep.urls import masked

if TYPE_CHECKING:
    from harness.sweep.space import FaultsSection


class RdbKind:
    """Any URL with a scheme other than journal://."""

    name: ClassVar[str] = "rdb"
    url_based: ClassVar[bool] = True

    @staticmethod
    def claims(url: str) -> bool:
        return "://" in url and not url.startswith("journal://")

    @staticmethod
    def open(url: str, faults: FaultsSection | None = None) -> BaseStorage:
        """With `faults`, Optuna's own heartbeat: every `heartbeat_s` a running trial records a
        beat, and a trial silent for `lease_s` is failed and re-enqueued by
        RetryHeartbeatStaleTrialCallback (at most `max_retry` times)."""
        import sqlalchemy.exc  # here: a journal study's workers never load SQLAlchemy

        kwargs: dict[str, Any] = {}
        if faults is not None:
            kwargs = {"heartbeat_interval": max(1, round(faults.heartbeat_s)),
                      "grace_period": max(2, round(faults.lease_s)),
                      "heartbeat_stale_trial_callback": retry_callback(faults.max_retry)}
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # nodes starting together race to create Optuna's tables: the loser retries
                # and finds them made
                if attempt == 4:
                    raise
                time.sleep(0.5 + attempt)
        raise AssertionError("unreachable")

    @classmethod
    def check(cls, url: str) -> str | None:
        """Opened once: a missing driver, an unreachable server or a folder that does not
        exist fails here."""
        if _in_memory_sqlite(url):
            raise StorageError(f"--storage {masked(url)}: an in-memory SQLite database lives in "
                               "one process and the workers are other processes: give a file, "
                               "e.g. sqlite:///results/study.db")
        try:
            cls.open(url).engine.dispose()  # opened to check it, then its connections closed
        except Exception as e:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            hint = (" (PostgreSQL needs a driver: pip install -e '.[postgres]')"
                    if isinstance(e, ModuleNotFoundError) else "")
            raise StorageError(f"--storage {masked(url)}: cannot open the storage: "
                               f"{type(e).__name__}: {detail}{hint}") from e
        return None

    @staticmethod
    def budget_lock(url: str, storage: BaseStorage) -> AbstractContextManager[None]:
        """A file lock beside an SQLite file; other servers (MySQL) get none: workers may then
        overshoot n_trials by at most one trial each, as with Optuna's MaxTrialsCallback."""
        if url.startswith("sqlite:///"):
            return file_lock(Path(url.removeprefix("sqlite:///") + ".budget.lock"))
        return no_lock()


def _in_memory_sqlite(url: str) -> bool:
    """sqlite://, sqlite:///:memory: or a file: URI in memory mode."""
    if not url.startswith("sqlite"):
        return False
    rest = url.split("://", 1)[1]
    return rest in ("", "/") or rest.startswith(("/:memory:", "?")) or "mode=memory" in rest


def retry_callback(max_retry: int) -> RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

"""A journal file (a path, or journal:///path): Optuna's JournalStorage, no server."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from harness.errors import StorageError
from harness.sweep.storage.locks import file_lock

if TYPE_CHECKING:
    from harness.sweep.space import FaultsSection


def journal_file(url: str) -> Path:
    return Path(url.removeprefix("journal://"))


class JournalKind:
    """Any URL no other kind claims is a journal file's path."""

    name: ClassVar[str] = "journal"
    url_based: ClassVar[bool] = False

    @staticmethod
    def claims(url: str) -> bool:
        return "://" not in url or url.startswith("journal://")

    @staticmethod
    def open(url: str, faults: FaultsSection | None = None) -> BaseStorage:
        path = journal_file(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))

    @staticmethod
    def check(url: str) -> str | None:
        """A journal whose last record was torn by a crash mid-write is repaired."""
        path = journal_file(url)
        return repair_torn_tail(path) if path.exists() else None

    @staticmethod
    def budget_lock(url: str, storage: BaseStorage) -> AbstractContextManager[None]:
        return file_lock(Path(f"{journal_file(url)}.budget.lock"))


def repair_torn_tail(path: Path) -> str | None:
    """Cut a journal back to its last complete record when a crash tore the last one.

    Optuna appends a record as one JSON line; a crash mid-write leaves a fragment without its
    newline (or an undecodable last line). Readers skip it, but the next append would glue a
    record to it and make the whole study unreadable. The file is copied to a backup first and
    the repair runs under the journal's own lock. A damaged record followed by good ones cannot
    be cut without losing them: that is a StorageError.
    """

    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # the bytes after the last newline: b"" when the file is whole
        keep = len(data) - len(tail)
        while lines and not _is_record(lines[-1]):  # a whole but undecodable last line goes too
            keep -= len(lines.pop()) + 1
        problem = _damaged_line(path, lines)
        if problem:
            raise StorageError(problem)
        if keep == len(data):
            return None
        if keep == 0 and not data.startswith(b'{"op_code"'):  # not a first record torn
            raise StorageError(f"{path}: not an Optuna journal (no record in its {len(data)} "
                               "bytes); give another --storage, or move the file away")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        backup = path.with_name(f"{path.name}.torn-{stamp}.bak")
        shutil.copy2(path, backup)
        with open(path, "r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
    finally:
        lock.release()
    return (f"repaired {path}: its last record was torn by a crash mid-write ({len(data) - keep} "
            f"bytes cut, {len(lines)} complete records kept); the file as it was: {backup}")


def journal_damage(path: Path) -> str | None:
    """What makes a journal unreadable (a line that is not a record, with records after it),
    else None; read-only (a torn last line alone is skipped by Optuna's readers)."""
    if not path.is_file():
        return None
    lines = path.read_bytes().split(b"\n")
    lines.pop()
    while lines and not _is_record(lines[-1]):
        lines.pop()
    return _damaged_line(path, lines)


def _damaged_line(path: Path, lines: list[bytes]) -> str | None:
    for number, line in enumerate(lines, start=1):
        if not _is_record(line):
            return (f"{path}: line {number} is not a journal record (a write torn by a crash, "
                    "then more records after it); the study cannot be read. Keep a copy of the "
                    "file, delete that line and re-run.")
    return None


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False

"""Study storages: one place decides a URL's kind, and each kind opens what it claims."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from harness.errors import StorageError
from harness.sweep.storage import (
    KINDS,
    budget_lock,
    open_storage,
    prepare_storage,
    storage_kind,
)


@pytest.mark.parametrize(("url", "kind"), [
    ("results/t/study.journal", "journal"),
    ("journal:///tmp/x.journal", "journal"),
    ("sqlite:///tmp/x.db", "rdb"),
    ("mysql+pymysql://u:p@h/db", "rdb"),
    ("postgresql://u:p@h/db", "postgresql"),
    ("postgresql+psycopg2://u:p@h/db", "postgresql"),
])
def test_each_url_gets_one_kind(url: str, kind: str):
    assert storage_kind(url).name == kind
    assert storage_kind(url).url_based == (kind != "journal")
    assert sum(k.claims(url) for k in KINDS.values()) >= 1


def test_journal_and_sqlite_open_check_and_lock(tmp_path: Path):
    for url in (str(tmp_path / "a" / "s.journal"), f"sqlite:///{tmp_path / 's.db'}"):
        assert prepare_storage(url) is None
        storage = open_storage(url)
        study = optuna.create_study(study_name="s", storage=storage)
        with budget_lock(url, storage):
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(optuna.load_study(study_name="s", storage=open_storage(url)).trials) == 2
    assert (tmp_path / "a" / "s.journal.budget.lock").exists()
    assert (tmp_path / "s.db.budget.lock").exists()


def test_an_unusable_rdb_is_refused_before_anything_is_written(tmp_path: Path):
    with pytest.raises(StorageError, match="cannot open the storage"):
        prepare_storage(f"sqlite:///{tmp_path / 'missing' / 's.db'}")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://alice:s3cret@host:5432/db", "postgresql://alice:***@host:5432/db"),
    ("postgresql://alice:s3c@ret@host/db", "postgresql://alice:***@host/db"),
    ("postgresql://alice@host/db?password=s3cret&sslmode=require",
     "postgresql://alice@host/db?password=***&sslmode=require"),
    ("postgresql://host/db?user=a&sslpassword=s3cret", "postgresql://host/db?user=a&sslpassword=***"),
    ("mysql+pymysql://u:s3%40cret@h/db", "mysql+pymysql://u:***@h/db"),
    ("sqlite:////tmp/s3cret.db", "sqlite:////tmp/s3cret.db"),  # a path, not a credential
])
def test_every_form_of_credential_is_masked(url: str, shown: str):
    from harness.sweep.urls import masked

    assert masked(url) == shown

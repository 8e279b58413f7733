"""sda.sqlite: the versioned open every sda database goes through."""

from __future__ import annotations

import threading

import pytest

from sda.errors import StorageError
from sda.services.storage import SCHEMA, SCHEMA_VERSION
from sda.sqlite import open_versioned


def test_services_creating_the_same_database_at_once_all_open_it(tmp_path):
    """A coordinator and a command started together both create coordinator.db: before, one of them died
    about one time in fifteen with "UNIQUE constraint failed: meta.key" or "database is locked"."""
    failures = []
    for trial in range(100):
        path = tmp_path / f"{trial}.db"
        barrier = threading.Barrier(8)

        def open_it(path=path, barrier=barrier) -> None:
            barrier.wait()
            try:
                open_versioned(path, SCHEMA, SCHEMA_VERSION, "coordinator").close()
            except StorageError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
    db = open_versioned(tmp_path / "0.db", SCHEMA, SCHEMA_VERSION, "coordinator")
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchall() == [(SCHEMA_VERSION,)]


def test_a_database_of_another_schema_version_is_refused(tmp_path):
    open_versioned(tmp_path / "c.db", SCHEMA, SCHEMA_VERSION, "coordinator").close()
    with pytest.raises(StorageError, match="coordinator schema version"):
        open_versioned(tmp_path / "c.db", SCHEMA, SCHEMA_VERSION + "-next", "coordinator")

"""SQLite as every `sda` service uses it: WAL, synchronous=FULL, explicit transactions."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def connect_sqlite(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with synchronous=FULL (a committed row survives power loss) and a
    generous busy timeout; autocommit, so transactions are explicit."""
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _connect_creating(path: Path, patience_s: float = 30.0) -> sqlite3.Connection:
    """connect_sqlite, retried while another process creates the same database: switching a new file to WAL
    can fail at once with "database is locked" (SQLite does not wait on the busy handler there)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return connect_sqlite(path)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + random.random() * 0.05)


def open_versioned(path: Path, schema: str, version: str, what: str) -> sqlite3.Connection:
    """Open (creating if need be) a database whose `meta` table records its schema version;
    StorageError naming `what` when it cannot be opened or was written by other code."""
    from .errors import StorageError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = _connect_creating(path)
        db.executescript(schema)
        # Two processes may create the database at once (a service and a command reading it): the first
        # writer's version stays, and both read back what is stored.
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (version,))
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        stored = row[0]
        if stored != version:
            raise StorageError(f"{path}: {what} schema version {stored}, this code knows {version}")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the {what} database {path}: {exc}") from exc
    return db


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT on an autocommit connection (ROLLBACK on error)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back by itself (SQLITE_FULL): keep the first error
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class LockedDatabase:
    """A connection shared between threads behind one lock: `_tx()` for a transaction, `_q()` for
    a read. Subclasses set `self._db` and `self._lock`."""

    _db: sqlite3.Connection
    _lock: threading.RLock

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction under the lock: committed on success, rolled back on error."""
        with self._lock, transaction(self._db) as db:
            yield db

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

"""The coordinator's storage, behind a small interface (`CoordinatorStore`).

`SqliteStore` is the default (WAL, synchronous=FULL: a committed row survives power loss).
`sda.services.postgres.PostgresStore` is the second implementation, for several ingest workers
sharing one database. Every write is idempotent: a duplicate insert reports False and changes
nothing, so a redelivered MQTT message is a no-op.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from ..errors import StorageError
from ..sqlite import LockedDatabase, open_versioned

OPEN_STATES = ("pending", "collecting", "closing", "computing")


@dataclass(frozen=True)
class Party:
    """A registered device or clerk, in registration order (`seq`)."""

    party_id: str
    role: str
    sign_key: bytes
    box_key: bytes
    seq: int


@dataclass(frozen=True)
class AggregationRow:
    """One aggregation as stored."""

    aggregation_id: str
    state: str
    spec: dict[str, Any]
    announce: bytes | None
    snapshot_hash: bytes | None
    bitmap: bytes | None
    result: dict[str, Any] | None
    error: str | None
    created_at: float
    updated_at: float


class CoordinatorStore(Protocol):
    """What the coordinator needs from a database."""

    def add_party(self, party_id: str, role: str, sign_key: bytes, box_key: bytes) -> bool: ...
    def parties(self, role: str | None = None) -> list[Party]: ...
    def create_aggregation(self, aggregation_id: str, spec: dict[str, Any]) -> bool: ...
    def set_announced(self, aggregation_id: str, announce: bytes) -> None: ...
    def add_participation(self, aggregation_id: str, device_id: str, padded_shares: bytes,
                          sealed_seed: bytes) -> bool: ...
    def participations(self, aggregation_id: str) -> list[tuple[str, bytes, bytes]]: ...
    def participation_count(self, aggregation_id: str) -> int: ...
    def close_collection(self, aggregation_id: str) -> bool: ...
    def set_snapshot(self, aggregation_id: str, snapshot_hash: bytes, bitmap: bytes,
                     jobs: list[tuple[str, bytes]]) -> None: ...
    def jobs(self, aggregation_id: str) -> list[tuple[str, bytes]]: ...
    def add_result(self, aggregation_id: str, clerk_id: str, envelope: bytes) -> bool: ...
    def results(self, aggregation_id: str) -> list[tuple[str, bytes]]: ...
    def finish(self, aggregation_id: str, state: str, result: dict[str, Any] | None,
               error: str | None) -> None: ...
    def aggregation(self, aggregation_id: str) -> AggregationRow | None: ...
    def aggregations(self, states: tuple[str, ...] | None = None) -> list[AggregationRow]: ...
    def announced_count(self) -> int: ...
    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parties (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    party_id TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('device', 'clerk')),
    sign_key BLOB NOT NULL,
    box_key BLOB NOT NULL,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS aggregations (
    aggregation_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    announce BLOB,
    snapshot_hash BLOB,
    bitmap BLOB,
    result TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS participations (
    aggregation_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    padded_shares BLOB NOT NULL,
    sealed_seed BLOB NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (aggregation_id, device_id)
);
CREATE TABLE IF NOT EXISTS jobs (
    aggregation_id TEXT NOT NULL,
    clerk_id TEXT NOT NULL,
    envelope BLOB NOT NULL,
    PRIMARY KEY (aggregation_id, clerk_id)
);
CREATE TABLE IF NOT EXISTS results (
    aggregation_id TEXT NOT NULL,
    clerk_id TEXT NOT NULL,
    envelope BLOB NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (aggregation_id, clerk_id)
);
"""
SCHEMA_VERSION = "1"


class SqliteStore(LockedDatabase):
    """CoordinatorStore on SQLite. Safe to share between threads (one lock)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = open_versioned(self.path, SCHEMA, SCHEMA_VERSION, "coordinator")

    # parties
    def add_party(self, party_id: str, role: str, sign_key: bytes, box_key: bytes) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT role, sign_key, box_key FROM parties WHERE party_id=?",
                             (party_id,)).fetchone()
            if row is not None:
                if (row[0], bytes(row[1]), bytes(row[2])) != (role, sign_key, box_key):
                    raise StorageError(f"{party_id} is already registered with other keys or role")
                return False
            db.execute("INSERT INTO parties (party_id, role, sign_key, box_key, registered_at)"
                       " VALUES (?, ?, ?, ?, ?)", (party_id, role, sign_key, box_key, time.time()))
            return True

    def parties(self, role: str | None = None) -> list[Party]:
        sql = "SELECT party_id, role, sign_key, box_key, seq FROM parties"
        rows = self._q(sql + (" WHERE role=? ORDER BY seq" if role else " ORDER BY seq"),
                       (role,) if role else ())
        return [Party(r[0], r[1], bytes(r[2]), bytes(r[3]), r[4]) for r in rows]

    # aggregations
    def create_aggregation(self, aggregation_id: str, spec: dict[str, Any]) -> bool:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM aggregations WHERE aggregation_id=?", (aggregation_id,)).fetchone():
                return False
            now = time.time()
            db.execute("INSERT INTO aggregations (aggregation_id, state, spec, created_at, updated_at)"
                       " VALUES (?, 'pending', ?, ?, ?)", (aggregation_id, json.dumps(spec), now, now))
            return True

    def set_announced(self, aggregation_id: str, announce: bytes) -> None:
        with self._tx() as db:
            db.execute("UPDATE aggregations SET state='collecting', announce=?, updated_at=?"
                       " WHERE aggregation_id=?", (announce, time.time(), aggregation_id))

    def add_participation(self, aggregation_id: str, device_id: str, padded_shares: bytes,
                          sealed_seed: bytes) -> bool:
        return self.add_participations([(aggregation_id, device_id, padded_shares, sealed_seed)])[0]

    def add_participations(self, rows: list[tuple[str, str, bytes, bytes]]) -> list[bool]:
        """Many (aggregation_id, device_id, padded_shares, sealed_seed) in one transaction (one
        fsync): the coordinator's group commit. True for each row newly stored; a row for an
        aggregation that is no longer collecting is not stored (the snapshot may be under way)."""
        now = time.time()
        with self._tx() as db:
            return [db.execute(_INSERT_WHILE_COLLECTING, (*row, now, row[0])).rowcount == 1 for row in rows]

    def close_collection(self, aggregation_id: str) -> bool:
        """collecting -> closing: from now on no participation is stored. False if not collecting."""
        with self._tx() as db:
            return db.execute("UPDATE aggregations SET state='closing', updated_at=? WHERE aggregation_id=?"
                              " AND state='collecting'", (time.time(), aggregation_id)).rowcount == 1

    def participations(self, aggregation_id: str) -> list[tuple[str, bytes, bytes]]:
        """(device_id, padded_shares, sealed_seed) in order of arrival."""
        rows = self._q("SELECT device_id, padded_shares, sealed_seed FROM participations"
                       " WHERE aggregation_id=? ORDER BY received_at, device_id", (aggregation_id,))
        return [(r[0], bytes(r[1]), bytes(r[2])) for r in rows]

    def participation_count(self, aggregation_id: str) -> int:
        return self._q("SELECT COUNT(*) FROM participations WHERE aggregation_id=?", (aggregation_id,))[0][0]

    def set_snapshot(self, aggregation_id: str, snapshot_hash: bytes, bitmap: bytes,
                     jobs: list[tuple[str, bytes]]) -> None:
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?)",
                           [(aggregation_id, c, e) for c, e in jobs])
            db.execute("UPDATE aggregations SET state='computing', snapshot_hash=?, bitmap=?, updated_at=?"
                       " WHERE aggregation_id=?", (snapshot_hash, bitmap, time.time(), aggregation_id))

    def jobs(self, aggregation_id: str) -> list[tuple[str, bytes]]:
        rows = self._q("SELECT clerk_id, envelope FROM jobs WHERE aggregation_id=?", (aggregation_id,))
        return [(r[0], bytes(r[1])) for r in rows]

    def add_result(self, aggregation_id: str, clerk_id: str, envelope: bytes) -> bool:
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?)",
                             (aggregation_id, clerk_id, envelope, time.time()))
            return cur.rowcount == 1

    def results(self, aggregation_id: str) -> list[tuple[str, bytes]]:
        rows = self._q("SELECT clerk_id, envelope FROM results WHERE aggregation_id=?", (aggregation_id,))
        return [(r[0], bytes(r[1])) for r in rows]

    def finish(self, aggregation_id: str, state: str, result: dict[str, Any] | None,
               error: str | None) -> None:
        with self._tx() as db:
            db.execute("UPDATE aggregations SET state=?, result=?, error=?, updated_at=? WHERE aggregation_id=?",
                       (state, None if result is None else json.dumps(result), error, time.time(),
                        aggregation_id))

    def aggregation(self, aggregation_id: str) -> AggregationRow | None:
        rows = self._q(_AGG_SELECT + " WHERE aggregation_id=?", (aggregation_id,))
        return _agg_row(rows[0]) if rows else None

    def aggregations(self, states: tuple[str, ...] | None = None) -> list[AggregationRow]:
        if states:
            marks = ",".join("?" * len(states))
            rows = self._q(_AGG_SELECT + f" WHERE state IN ({marks}) ORDER BY created_at", states)
        else:
            rows = self._q(_AGG_SELECT + " ORDER BY created_at")
        return [_agg_row(r) for r in rows]

    def announced_count(self) -> int:
        """How many aggregations were ever announced (the round number of the next draw, minus one)."""
        return self._q("SELECT COUNT(*) FROM aggregations WHERE announce IS NOT NULL")[0][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


_INSERT_WHILE_COLLECTING = (
    "INSERT OR IGNORE INTO participations SELECT ?, ?, ?, ?, ? WHERE EXISTS"
    " (SELECT 1 FROM aggregations WHERE aggregation_id=? AND state='collecting')"
)

_AGG_SELECT = ("SELECT aggregation_id, state, spec, announce, snapshot_hash, bitmap, result, error,"
               " created_at, updated_at FROM aggregations")


def _agg_row(r: tuple) -> AggregationRow:
    return AggregationRow(
        aggregation_id=r[0], state=r[1], spec=json.loads(r[2]),
        announce=None if r[3] is None else bytes(r[3]),
        snapshot_hash=None if r[4] is None else bytes(r[4]),
        bitmap=None if r[5] is None else bytes(r[5]),
        result=None if r[6] is None else json.loads(r[6]), error=r[7],
        created_at=r[8], updated_at=r[9],
    )


def open_store(url: str | None, state_dir: Path, must_exist: bool = False) -> CoordinatorStore:
    """The store a `--database` value names (the one place that reads it).

    None: SQLite at STATE/coordinator.db. `postgresql://...` or `postgres://...`: PostgresStore
    (psycopg is imported only then). `sqlite:///rel/path` or `sqlite:////abs/path` (SQLAlchemy's
    spelling: what follows `sqlite:///` is the path) or a plain path: SQLite there, relative paths
    from the working directory. `must_exist`: a StorageError instead of creating a new SQLite file.
    """
    if url is not None and url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    if url is None:
        path = Path(state_dir) / "coordinator.db"
    elif url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        path = Path(unquote(url.removeprefix("sqlite:///")))
    elif "://" in url:
        raise StorageError(f"--database must be postgresql://..., sqlite:///PATH or a path, got {url.split('://')[0]}://...")
    else:
        path = Path(url)
    if must_exist and not path.exists():
        raise StorageError(f"no coordinator database at {path}")
    return SqliteStore(path)

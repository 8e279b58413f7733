"""`PostgresStore`: the coordinator's store on PostgreSQL, for a leader and ingest workers sharing one database.

Same interface and semantics as `SqliteStore` (see `storage.CoordinatorStore`): every insert is
idempotent (`INSERT ... ON CONFLICT DO NOTHING`, False on a duplicate), parties get their
registration order `seq` from an identity column, a party re-registering with other keys is a
StorageError, spec and result are stored as JSON, keys and envelopes as BYTEA. The schema is
created if missing (under an advisory lock, so processes starting together do not race) and
carries a schema-version row.

One connection per store, guarded by a lock (the coordinator's worker thread and the CLI may
share a store); autocommit is off and every method is one explicit transaction, committed on
success and rolled back on error. A connection the server dropped is replaced on the next call.
psycopg 3 is imported here only, so SQLite users never need it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from ..errors import StorageError
from .storage import SCHEMA_VERSION, AggregationRow, Party

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parties (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    party_id TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('device', 'clerk')),
    sign_key BYTEA NOT NULL,
    box_key BYTEA NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS aggregations (
    aggregation_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    spec JSON NOT NULL,
    announce BYTEA,
    snapshot_hash BYTEA,
    bitmap BYTEA,
    result JSON,
    error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS participations (
    aggregation_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    padded_shares BYTEA NOT NULL,
    sealed_seed BYTEA NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (aggregation_id, device_id)
);
CREATE TABLE IF NOT EXISTS jobs (
    aggregation_id TEXT NOT NULL,
    clerk_id TEXT NOT NULL,
    envelope BYTEA NOT NULL,
    PRIMARY KEY (aggregation_id, clerk_id)
);
CREATE TABLE IF NOT EXISTS results (
    aggregation_id TEXT NOT NULL,
    clerk_id TEXT NOT NULL,
    envelope BYTEA NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (aggregation_id, clerk_id)
);
"""
_SCHEMA_LOCK = 0x5DA0_0001  # pg_advisory_xact_lock key: one process creates the schema at a time

# JSON columns are read as text and parsed here, exactly as SqliteStore parses its TEXT columns.
_AGG_SELECT = ("SELECT aggregation_id, state, spec::text, announce, snapshot_hash, bitmap, result::text, error,"
               " created_at, updated_at FROM aggregations")


def _redact(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    with suppress(Exception):
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        return " ".join(f"{k}={'***' if k == 'password' else v}" for k, v in info.items())
    return "(unparsable DSN)"


class PostgresStore:
    """CoordinatorStore on PostgreSQL (psycopg 3). Safe to share between threads (one lock)."""

    def __init__(self, dsn: str, connect_timeout_s: int = 10):
        self.dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.RLock()
        self._conn: psycopg.Connection | None = None
        try:
            with self._tx() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                cur.execute(SCHEMA)
                cur.execute("INSERT INTO meta VALUES ('schema', %s) ON CONFLICT (key) DO NOTHING", (SCHEMA_VERSION,))
                cur.execute("SELECT value FROM meta WHERE key = 'schema'")
                version = cur.fetchone()[0]
        except psycopg.Error as exc:
            self.close()
            raise StorageError(f"cannot open the coordinator database {_redact(dsn)}: {exc}") from exc
        if version != SCHEMA_VERSION:
            self.close()
            raise StorageError(f"{_redact(dsn)}: schema version {version}, this code knows {SCHEMA_VERSION}")

    # --- connection and transactions ---------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with suppress(Exception):
                    conn.close()
            conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=self._connect_timeout_s)
            self._conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor]:
        """One transaction under the lock: committed on success, rolled back on error."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    yield cur
            except BaseException:
                if not conn.closed and not conn.broken:
                    with suppress(psycopg.Error):
                        conn.rollback()
                raise
            conn.commit()

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._tx() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    # --- parties -----------------------------------------------------------------------------

    def add_party(self, party_id: str, role: str, sign_key: bytes, box_key: bytes) -> bool:
        with self._tx() as cur:
            if self._known_party(cur, party_id, role, sign_key, box_key):
                return False
            # Registrations are serialised, so `seq` order is also commit order: a reader never sees
            # party seq=6 before seq=5 commits (the registry snapshot is a prefix of this order).
            cur.execute("LOCK TABLE parties IN SHARE ROW EXCLUSIVE MODE")
            if self._known_party(cur, party_id, role, sign_key, box_key):
                return False
            cur.execute("INSERT INTO parties (party_id, role, sign_key, box_key, registered_at)"
                        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (party_id) DO NOTHING",
                        (party_id, role, sign_key, box_key, time.time()))
            return cur.rowcount == 1

    @staticmethod
    def _known_party(cur: psycopg.Cursor, party_id: str, role: str, sign_key: bytes, box_key: bytes) -> bool:
        cur.execute("SELECT role, sign_key, box_key FROM parties WHERE party_id = %s", (party_id,))
        row = cur.fetchone()
        if row is None:
            return False
        if (row[0], bytes(row[1]), bytes(row[2])) != (role, sign_key, box_key):
            raise StorageError(f"{party_id} is already registered with other keys or role")
        return True

    def parties(self, role: str | None = None) -> list[Party]:
        sql = "SELECT party_id, role, sign_key, box_key, seq FROM parties"
        rows = self._q(sql + (" WHERE role = %s ORDER BY seq" if role else " ORDER BY seq"),
                       (role,) if role else ())
        return [Party(r[0], r[1], bytes(r[2]), bytes(r[3]), r[4]) for r in rows]

    # --- aggregations ------------------------------------------------------------------------

    def create_aggregation(self, aggregation_id: str, spec: dict[str, Any]) -> bool:
        now = time.time()
        with self._tx() as cur:
            cur.execute("INSERT INTO aggregations (aggregation_id, state, spec, created_at, updated_at)"
                        " VALUES (%s, 'pending', %s::json, %s, %s) ON CONFLICT (aggregation_id) DO NOTHING",
                        (aggregation_id, json.dumps(spec), now, now))
            return cur.rowcount == 1

    def set_announced(self, aggregation_id: str, announce: bytes) -> None:
        with self._tx() as cur:
            cur.execute("UPDATE aggregations SET state = 'collecting', announce = %s, updated_at = %s"
                        " WHERE aggregation_id = %s", (announce, time.time(), aggregation_id))

    def add_participation(self, aggregation_id: str, device_id: str, padded_shares: bytes,
                          sealed_seed: bytes) -> bool:
        return self.add_participations([(aggregation_id, device_id, padded_shares, sealed_seed)])[0]

    def add_participations(self, rows: list[tuple[str, str, bytes, bytes]]) -> list[bool]:
        """Group commit; a row is stored only while its aggregation is collecting. The row lock
        (FOR SHARE) orders each insert against the leader's close_collection on another worker."""
        now = time.time()
        out = []
        with self._tx() as cur:
            for agg, device, shares, seed in rows:
                cur.execute("SELECT state FROM aggregations WHERE aggregation_id = %s FOR SHARE", (agg,))
                row = cur.fetchone()
                if row is None or row[0] != "collecting":
                    out.append(False)
                    continue
                cur.execute("INSERT INTO participations VALUES (%s, %s, %s, %s, %s)"
                            " ON CONFLICT (aggregation_id, device_id) DO NOTHING", (agg, device, shares, seed, now))
                out.append(cur.rowcount == 1)
        return out

    def close_collection(self, aggregation_id: str) -> bool:
        with self._tx() as cur:
            cur.execute("UPDATE aggregations SET state = 'closing', updated_at = %s WHERE aggregation_id = %s"
                        " AND state = 'collecting'", (time.time(), aggregation_id))
            return cur.rowcount == 1

    def participations(self, aggregation_id: str) -> list[tuple[str, bytes, bytes]]:
        rows = self._q("SELECT device_id, padded_shares, sealed_seed FROM participations"
                       " WHERE aggregation_id = %s ORDER BY received_at, device_id", (aggregation_id,))
        return [(r[0], bytes(r[1]), bytes(r[2])) for r in rows]

    def participation_count(self, aggregation_id: str) -> int:
        return self._q("SELECT COUNT(*) FROM participations WHERE aggregation_id = %s", (aggregation_id,))[0][0]

    def set_snapshot(self, aggregation_id: str, snapshot_hash: bytes, bitmap: bytes,
                     jobs: list[tuple[str, bytes]]) -> None:
        with self._tx() as cur:
            cur.executemany("INSERT INTO jobs VALUES (%s, %s, %s) ON CONFLICT (aggregation_id, clerk_id)"
                            " DO UPDATE SET envelope = EXCLUDED.envelope",
                            [(aggregation_id, c, e) for c, e in jobs])
            cur.execute("UPDATE aggregations SET state = 'computing', snapshot_hash = %s, bitmap = %s,"
                        " updated_at = %s WHERE aggregation_id = %s",
                        (snapshot_hash, bitmap, time.time(), aggregation_id))

    def jobs(self, aggregation_id: str) -> list[tuple[str, bytes]]:
        rows = self._q("SELECT clerk_id, envelope FROM jobs WHERE aggregation_id = %s ORDER BY clerk_id",
                       (aggregation_id,))
        return [(r[0], bytes(r[1])) for r in rows]

    def add_result(self, aggregation_id: str, clerk_id: str, envelope: bytes) -> bool:
        with self._tx() as cur:
            cur.execute("INSERT INTO results VALUES (%s, %s, %s, %s) ON CONFLICT (aggregation_id, clerk_id) DO NOTHING",
                        (aggregation_id, clerk_id, envelope, time.time()))
            return cur.rowcount == 1

    def results(self, aggregation_id: str) -> list[tuple[str, bytes]]:
        rows = self._q("SELECT clerk_id, envelope FROM results WHERE aggregation_id = %s ORDER BY clerk_id",
                       (aggregation_id,))
        return [(r[0], bytes(r[1])) for r in rows]

    def finish(self, aggregation_id: str, state: str, result: dict[str, Any] | None,
               error: str | None) -> None:
        with self._tx() as cur:
            cur.execute("UPDATE aggregations SET state = %s, result = %s::json, error = %s, updated_at = %s"
                        " WHERE aggregation_id = %s",
                        (state, None if result is None else json.dumps(result), error, time.time(),
                         aggregation_id))

    def aggregation(self, aggregation_id: str) -> AggregationRow | None:
        rows = self._q(_AGG_SELECT + " WHERE aggregation_id = %s", (aggregation_id,))
        return _agg_row(rows[0]) if rows else None

    def aggregations(self, states: tuple[str, ...] | None = None) -> list[AggregationRow]:
        if states:
            rows = self._q(_AGG_SELECT + " WHERE state = ANY(%s) ORDER BY created_at", (list(states),))
        else:
            rows = self._q(_AGG_SELECT + " ORDER BY created_at")
        return [_agg_row(r) for r in rows]

    def announced_count(self) -> int:
        """How many aggregations were ever announced (the round number of the next draw, minus one)."""
        return self._q("SELECT COUNT(*) FROM aggregations WHERE announce IS NOT NULL")[0][0]

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with suppress(psycopg.Error):
                    conn.close()


def _agg_row(r: tuple) -> AggregationRow:
    return AggregationRow(
        aggregation_id=r[0], state=r[1], spec=json.loads(r[2]),
        announce=None if r[3] is None else bytes(r[3]),
        snapshot_hash=None if r[4] is None else bytes(r[4]),
        bitmap=None if r[5] is None else bytes(r[5]),
        result=None if r[6] is None else json.loads(r[6]), error=r[7],
        created_at=r[8], updated_at=r[9],
    )

"""The device store's schema as an ordered list of migrations.

A database records in `meta.schema_version` how many steps it has had. A shipped step is never
edited: a change to the schema is a new step at the end, so every device, whatever version it
was last opened by, walks the same path to the current one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sda.sqlite import transaction

from ..errors import StoreError

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: saved moments with their clip and embeddings; one label each.
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE detections (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an id is never reused after a delete
            time REAL NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('detection', 'near_miss', 'captured_miss')),
            score REAL,
            model_version TEXT NOT NULL,
            clip TEXT UNIQUE,
            embeddings BLOB,
            embeddings_shape TEXT)""",
        "CREATE INDEX detections_time ON detections (time)",
        """CREATE TABLE labels (
            detection_id INTEGER PRIMARY KEY REFERENCES detections (id) ON DELETE CASCADE,
            label TEXT NOT NULL CHECK (label IN ('true_accept', 'false_accept', 'missed_wake_word', 'unsure')),
            labelled_at REAL NOT NULL)""",
    ),
    # 2: label history for undo, the owner's settings, retention state.
    (
        "ALTER TABLE detections ADD COLUMN clip_missing INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE detections ADD COLUMN learned_at REAL",
        """CREATE TABLE label_history (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            batch INTEGER NOT NULL,  -- one labelling action, single or bulk: what one undo takes back
            detection_id INTEGER NOT NULL REFERENCES detections (id) ON DELETE CASCADE,
            label TEXT NOT NULL,
            previous TEXT,
            previous_at REAL)""",
        "CREATE INDEX label_history_batch ON label_history (batch)",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
    # 3: the privacy ledger of learning rounds, and the clerk's standing and jobs.
    (
        """CREATE TABLE learning_rounds (
            round_id TEXT PRIMARY KEY,
            time REAL NOT NULL,
            epsilon_spent REAL NOT NULL CHECK (epsilon_spent >= 0),
            delta REAL NOT NULL CHECK (delta >= 0 AND delta < 1),
            status TEXT NOT NULL CHECK (status IN ('completed', 'refused', 'failed')),
            label_count INTEGER NOT NULL CHECK (label_count >= 0))""",
        "CREATE INDEX learning_rounds_time ON learning_rounds (time)",
        """CREATE TABLE clerk_status (
            id INTEGER PRIMARY KEY CHECK (id = 1),  -- one row, once the owner has answered
            opted_in INTEGER NOT NULL CHECK (opted_in IN (0, 1)),
            stake INTEGER NOT NULL CHECK (stake >= 0),
            updated_at REAL NOT NULL)""",
        """CREATE TABLE clerk_jobs (
            job_id TEXT PRIMARY KEY,
            time REAL NOT NULL,
            tokens INTEGER NOT NULL)  -- earned; negative for a penalty""",
        "CREATE INDEX clerk_jobs_time ON clerk_jobs (time)",
    ),
    # 4: the daily usage counters (assistant.analytics): one row per local day and event, counts as they
    # happened (unclipped: the clip to the event's declared range happens when a day's vector is built).
    (
        """CREATE TABLE analytics_counts (
            day TEXT NOT NULL,  -- local calendar day, YYYY-MM-DD
            event TEXT NOT NULL,
            count INTEGER NOT NULL CHECK (count >= 0),
            PRIMARY KEY (day, event))""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: sqlite3.Connection) -> int:
    """The number of migrations `db` has had (0 for a new file)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is None:
        return 0
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Bring `db` to SCHEMA_VERSION, one transaction per step (a crash mid-way leaves a consistent
    older version, which the next open carries on from); StoreError for a database that is newer."""
    while True:
        # The version is read inside the write transaction, so two processes opening an old database
        # at once cannot both apply the same step.
        with transaction(db):
            version = schema_version(db)
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path}: the store is at schema version {version}, this code knows up to "
                                 f"{SCHEMA_VERSION}; upgrade the assistant rather than open it with old code")
            if version == SCHEMA_VERSION:
                return version
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(version + 1),))

"""The device store's schema step 3 on real SQLite: the learning rounds' privacy ledger, the clerk's standing
and jobs, the new privacy settings, keyset paging of the review queue, and a version-2 database migrating
forward with its rows."""

from __future__ import annotations

import json
import sqlite3
import zipfile

import numpy as np
import pytest

from assistant.errors import StoreError
from assistant.store import SCHEMA_VERSION, ClerkJob, ClerkStatus, Label, LearningRound, RoundStatus, Store

T0 = 1_750_000_000.0
EMB = np.ones((4, 8), np.float32)


def audio(seconds: float = 0.1) -> np.ndarray:
    return np.zeros(int(16_000 * seconds), np.int16)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


def test_learning_rounds_are_a_ledger_that_sums_what_was_spent(store):
    assert store.learning_rounds() == [] and store.privacy_spent() == (0.0, 0.0)
    rounds = [LearningRound("r1", T0, 0.5, 1e-6, RoundStatus.COMPLETED, 12),
              LearningRound("r2", T0 + 60, 0.0, 0.0, RoundStatus.REFUSED, 12),
              LearningRound("r3", T0 + 120, 0.75, 2e-6, RoundStatus.FAILED, 15)]
    for r in rounds:
        store.record_learning_round(r)
    assert store.learning_rounds() == rounds[::-1]
    assert store.learning_rounds(limit=1) == [rounds[2]]
    eps, delta = store.privacy_spent()
    assert eps == pytest.approx(1.25) and delta == pytest.approx(3e-6)

    with pytest.raises(StoreError, match="'r1' not recorded"):  # a round spends once
        store.record_learning_round(LearningRound("r1", T0 + 999, 9.0, 0.0, RoundStatus.COMPLETED, 1))
    with pytest.raises(StoreError, match="not recorded"):
        store.record_learning_round(LearningRound("r4", T0, -0.1, 0.0, RoundStatus.COMPLETED, 1))
    with pytest.raises(StoreError, match="status 'won'"):
        store.record_learning_round(LearningRound("r5", T0, 0.1, 0.0, "won", 1))  # type: ignore[arg-type]
    assert store.privacy_spent()[0] == pytest.approx(1.25)


def test_clerk_status_and_jobs(store):
    assert store.clerk_status() == ClerkStatus(False, 0, 0, 0)
    store.set_clerk(True, 500, time_s=T0)
    store.record_clerk_job("agg-1", 12, time_s=T0 + 1)
    store.record_clerk_job("agg-2", 9, time_s=T0 + 2)
    store.record_clerk_job("agg-3", -50, time_s=T0 + 3)  # a penalty for a late result
    assert store.clerk_status() == ClerkStatus(True, 500, 3, -29)
    assert store.clerk_jobs(limit=2) == [ClerkJob("agg-3", T0 + 3, -50), ClerkJob("agg-2", T0 + 2, 9)]
    with pytest.raises(StoreError, match="agg-1"):
        store.record_clerk_job("agg-1", 12)
    with pytest.raises(StoreError, match="stake"):
        store.set_clerk(True, -1)
    store.set_clerk(False, 0)
    assert store.clerk_status() == ClerkStatus(False, 0, 3, -29)


def test_privacy_settings_are_validated_and_kept(tmp_path):
    with Store(tmp_path / "s") as store:
        s = store.settings()
        assert (s.learning_opt_in, s.analytics_opt_in, s.epsilon_budget, s.capture_seconds) == (False, False, 8.0, 4.0)
        store.update_settings(learning_opt_in=True, epsilon_budget=4, capture_seconds=6.5)
        with pytest.raises(StoreError, match=r"learning_opt_in.*true or false"):
            store.update_settings(learning_opt_in="yes")
        with pytest.raises(StoreError, match="epsilon_budget"):
            store.update_settings(epsilon_budget=-1.0)
        with pytest.raises(StoreError, match=r"capture_seconds.*> 0"):
            store.update_settings(capture_seconds=0)
        with pytest.raises(StoreError, match="analytics_opt_in"):
            store.update_settings(analytics_opt_in=1)
    with Store(tmp_path / "s") as store:
        s = store.settings()
        assert (s.learning_opt_in, s.analytics_opt_in, s.epsilon_budget, s.capture_seconds) == (True, False, 4, 6.5)


def test_review_queue_pages_by_key_while_rows_are_labelled_and_added(store):
    ids = [store.record_detection(audio(), 0.9, "v", EMB, time_s=T0 + k // 2) for k in range(10)]  # pairs share a time
    newest_first = ids[::-1]
    first = store.review_queue(limit=4)
    assert [r.id for r in first] == newest_first[:4]
    store.label([r.id for r in first], Label.TRUE_ACCEPT)  # an offset of 4 would now skip four rows
    store.record_detection(audio(), 0.9, "v", EMB, time_s=T0 + 100)  # and a new row arrives at the top
    last = first[-1]
    page = store.review_queue(limit=4, before=(last.time_s, last.id))
    assert [r.id for r in page] == newest_first[4:8]
    everything = store.review_queue(unlabelled_only=False, limit=100, before=(last.time_s, last.id))
    assert [r.id for r in everything] == newest_first[4:]


def test_export_and_delete_everything_cover_the_new_tables(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    store.record_learning_round(LearningRound("r1", T0, 0.5, 1e-6, RoundStatus.COMPLETED, 3))
    store.set_clerk(True, 100, time_s=T0)
    store.record_clerk_job("agg-1", 7, time_s=T0 + 1)
    with zipfile.ZipFile(store.export(tmp_path / "x.zip")) as z:
        doc = json.loads(z.read("store.json"))
    assert doc["learning_rounds"] == [{"round_id": "r1", "time": T0, "epsilon_spent": 0.5, "delta": 1e-6,
                                       "status": "completed", "label_count": 3}]
    assert doc["clerk"] == {"status": [{"opted_in": 1, "stake": 100, "updated_at": T0}],
                            "jobs": [{"job_id": "agg-1", "time": T0 + 1, "tokens": 7}]}
    store.delete_everything()
    assert not root.exists()


# Schema version 2 exactly as it shipped (steps 1 and 2): a frozen copy, so the test fails if either is edited.
V2_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE detections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('detection', 'near_miss', 'captured_miss')),
    score REAL,
    model_version TEXT NOT NULL,
    clip TEXT UNIQUE,
    embeddings BLOB,
    embeddings_shape TEXT);
CREATE INDEX detections_time ON detections (time);
CREATE TABLE labels (
    detection_id INTEGER PRIMARY KEY REFERENCES detections (id) ON DELETE CASCADE,
    label TEXT NOT NULL CHECK (label IN ('true_accept', 'false_accept', 'missed_wake_word', 'unsure')),
    labelled_at REAL NOT NULL);
ALTER TABLE detections ADD COLUMN clip_missing INTEGER NOT NULL DEFAULT 0;
ALTER TABLE detections ADD COLUMN learned_at REAL;
CREATE TABLE label_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch INTEGER NOT NULL,
    detection_id INTEGER NOT NULL REFERENCES detections (id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    previous TEXT,
    previous_at REAL);
CREATE INDEX label_history_batch ON label_history (batch);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '2');
"""


def test_a_v2_database_migrates_to_the_ledger_tables_with_its_rows(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    db = sqlite3.connect(root / "store.db")
    db.executescript(V2_DDL)
    db.execute("INSERT INTO detections (id, time, kind, score, model_version) VALUES (1, ?, 'detection', 0.8, 'v2')",
               (T0,))
    db.execute("INSERT INTO labels VALUES (1, 'true_accept', ?)", (T0 + 5,))
    db.execute("INSERT INTO label_history (batch, detection_id, label) VALUES (1, 1, 'true_accept')")
    db.execute("INSERT INTO settings VALUES ('clip_retention_days', '7')")
    db.commit()
    db.close()

    with Store(root) as store:
        assert store.get(1).label == Label.TRUE_ACCEPT
        assert store.settings().clip_retention_days == 7 and store.settings().epsilon_budget == 8.0
        assert store.clerk_status() == ClerkStatus(False, 0, 0, 0) and store.privacy_spent() == (0.0, 0.0)
        store.record_learning_round(LearningRound("r1", T0, 0.5, 0.0, RoundStatus.COMPLETED, 1))
        assert store.undo_last_label()[0].detection_id == 1  # the old history still undoes
    db = sqlite3.connect(root / "store.db")
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert SCHEMA_VERSION == 4  # 4: analytics_counts (tests/test_analytics.py covers that step)
    db.close()

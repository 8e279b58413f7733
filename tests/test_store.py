"""The device store on real SQLite and real files: round trips, the near-miss quota, labels with undo,
retention, export, delete-everything, migrations, two processes at once, and a crash mid-write."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import time
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from assistant.audio import RingBuffer, read_audio
from assistant.errors import StoreError
from assistant.store import SCHEMA_VERSION, Kind, Label, LabelChange, Store
from assistant.store.policy import local_day

T0 = datetime(2025, 6, 10, 12, 0).timestamp()  # local noon: a whole local day either side
DAY = 86_400.0
EMB = (np.arange(16 * 8, dtype=np.float32).reshape(16, 8) / 7).astype(np.float32)


def audio(seconds: float = 0.2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-3000, 3000, int(16_000 * seconds)).astype(np.int16)


def clip_files(store: Store) -> set[str]:
    return {p.name for p in store.clip_dir.iterdir()}


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


def test_detection_round_trip_survives_reopen(tmp_path):
    root = tmp_path / "store"
    samples = audio(0.5)
    with Store(root) as store:
        i = store.record_detection(samples, 0.93, "kws-1.2", EMB, time_s=T0)
    with Store(root) as store:
        r = store.get(i)
        assert (r.id, r.time_s, r.kind, r.score, r.model_version) == (i, T0, Kind.DETECTION, 0.93, "kws-1.2")
        assert r.label is None and not r.clip_missing and r.learned_at is None
        assert r.embeddings.dtype == np.float32 and np.array_equal(r.embeddings, EMB)
        path = store.clip_path(r)
        assert path.parent == store.clip_dir and np.array_equal(read_audio(path), samples)
        assert clip_files(store) == {r.clip}
        assert store.get(i + 1) is None


def test_captured_miss_keeps_the_last_seconds_of_the_ring(store):
    ring = RingBuffer(seconds=3.0)
    ring.append(audio(3.0, seed=1))
    i = store.record_captured_miss(ring, 1.5, "kws-1.2", time_s=T0)
    r = store.get(i)
    assert r.kind == Kind.CAPTURED_MISS and r.embeddings is None and r.score is None
    assert np.array_equal(read_audio(store.clip_path(r)), ring.last(1.5))


def test_near_miss_band_and_daily_quota(store):
    store.update_settings(near_miss_daily_quota=3, near_miss_band=0.3)

    def near(score: float, t: float) -> int | None:
        return store.record_near_miss(audio(0.1), score, 0.5, "kws-1.2", EMB, time_s=t)

    assert near(0.19, T0) is None and near(0.5, T0) is None  # under the band; at the threshold it is a detection
    assert all(near(s, T0 + k) is not None for k, s in enumerate((0.2, 0.35, 0.49)))
    assert near(0.4, T0 + 10) is None  # today's quota is spent
    start, end = local_day(T0)
    assert near(0.4, start - 1) is not None and near(0.4, end) is not None  # yesterday and tomorrow have their own
    assert store.count() == 5 and len(clip_files(store)) == 5  # a refused near miss writes no clip


def test_labels_relabel_bulk_and_undo(store):
    a, b, c = (store.record_detection(audio(0.1), 0.9, "v", EMB, time_s=T0 + k) for k in range(3))
    store.label(a, "true_accept", time_s=T0 + 10)
    store.label(a, Label.FALSE_ACCEPT, time_s=T0 + 11)
    assert (store.get(a).label, store.get(a).labelled_at) == (Label.FALSE_ACCEPT, T0 + 11)
    store.label([b, c, b], Label.TRUE_ACCEPT)
    assert [store.get(i).label for i in (b, c)] == [Label.TRUE_ACCEPT] * 2

    with pytest.raises(StoreError, match="no row 999"):
        store.label([a, 999], Label.UNSURE)
    assert store.get(a).label == Label.FALSE_ACCEPT  # the bulk label was all or nothing
    with pytest.raises(StoreError, match="need one of"):
        store.label(a, "maybe")

    undone = store.undo_last_label()  # the bulk action, as one step
    assert set(undone) == {LabelChange(b, Label.TRUE_ACCEPT, None), LabelChange(c, Label.TRUE_ACCEPT, None)}
    assert store.get(b).label is None and store.get(c).label is None
    assert store.undo_last_label() == (LabelChange(a, Label.FALSE_ACCEPT, Label.TRUE_ACCEPT),)
    assert (store.get(a).label, store.get(a).labelled_at) == (Label.TRUE_ACCEPT, T0 + 10)
    assert store.undo_last_label() == (LabelChange(a, Label.TRUE_ACCEPT, None),)
    assert store.get(a).label is None and store.undo_last_label() == ()


def test_review_queue_count_and_stats(store):
    ids = [store.record_detection(audio(0.1), 0.9, "v", EMB, time_s=T0 + k) for k in range(6)]
    store.label(ids[:3], Label.TRUE_ACCEPT)
    store.label(ids[3], Label.FALSE_ACCEPT)
    store.label(ids[4], Label.MISSED_WAKE_WORD)
    assert [r.id for r in store.review_queue(unlabelled_only=False, limit=4)] == ids[::-1][:4]
    assert [r.id for r in store.review_queue(unlabelled_only=False, limit=4, offset=4)] == ids[1::-1]
    assert [r.id for r in store.review_queue()] == [ids[5]]
    assert (store.count(), store.count(unlabelled_only=True)) == (6, 1)
    s = store.stats()
    assert (s.true_accept, s.false_accept, s.missed_wake_word, s.unsure, s.unlabelled) == (3, 1, 1, 0, 1)
    assert s.precision == 0.75 and s.misses == 1


def test_settings_are_validated_and_kept(tmp_path):
    with Store(tmp_path / "s") as store:
        assert store.settings().near_miss_daily_quota == 20
        store.update_settings(clip_retention_days=7, delete_rows_after_days=365)
        with pytest.raises(StoreError, match="unknown setting"):
            store.update_settings(keep_forever=True)
        with pytest.raises(StoreError, match="storage_cap_bytes"):
            store.update_settings(storage_cap_bytes=-1)
    with Store(tmp_path / "s") as store:
        s = store.settings()
        assert (s.clip_retention_days, s.delete_rows_after_days, s.storage_cap_bytes) == (7, 365, 256 * 2**20)


def test_retention_removes_old_and_learned_clips_but_keeps_rows(store):
    store.update_settings(clip_retention_days=10)
    old = store.record_detection(audio(0.1), 0.9, "v", EMB, time_s=T0 - 11 * DAY)
    learned = store.record_detection(audio(0.1), 0.9, "v", EMB, time_s=T0 - DAY)
    fresh = store.record_detection(audio(0.1), 0.9, "v", EMB, time_s=T0 - DAY)
    store.label([old, learned], Label.TRUE_ACCEPT)
    store.mark_learned([learned])
    paths = {i: store.clip_path(store.get(i)) for i in (old, learned, fresh)}
    freed = paths[old].stat().st_size + paths[learned].stat().st_size

    report = store.apply_retention(now_s=T0)
    assert (report.clips_removed, report.bytes_freed, report.rows_deleted) == (2, freed, 0)
    assert not paths[old].exists() and not paths[learned].exists() and paths[fresh].exists()
    for i in (old, learned):
        r = store.get(i)
        assert r.clip is None and not r.clip_missing and r.label == Label.TRUE_ACCEPT
        assert np.array_equal(r.embeddings, EMB)
    assert store.get(fresh).clip is not None
    assert store.apply_retention(now_s=T0).clips_removed == 0


def test_retention_deletes_rows_when_the_owner_asks(store):
    store.update_settings(delete_rows_after_days=30)
    old = store.record_detection(audio(0.1), 0.9, "v", EMB, time_s=T0 - 31 * DAY)
    new = store.record_detection(audio(0.1), 0.9, "v", EMB, time_s=T0)
    store.label([old, new], Label.FALSE_ACCEPT)
    report = store.apply_retention(now_s=T0)
    assert (report.clips_removed, report.rows_deleted) == (1, 1)
    assert store.get(old) is None and store.count() == 1 and clip_files(store) == {store.get(new).clip}
    # the history of the deleted row went with it: undo touches only what is left
    assert store.undo_last_label() == (LabelChange(new, Label.FALSE_ACCEPT, None),)


def test_storage_cap_drops_unlabelled_clips_first_oldest_first(store):
    ids = [store.record_detection(audio(0.1), 0.9, "v", EMB, time_s=T0 + k) for k in range(4)]
    size = store.clip_path(store.get(ids[0])).stat().st_size
    store.label(ids[0], Label.TRUE_ACCEPT)  # the oldest, but labelled: kept over unlabelled ones
    store.update_settings(storage_cap_bytes=2 * size)
    report = store.apply_retention(now_s=T0 + 10)
    assert (report.clips_removed, report.bytes_freed) == (2, 2 * size)
    assert [store.get(i).clip is not None for i in ids] == [True, False, False, True]
    assert sum(p.stat().st_size for p in store.clip_dir.iterdir()) <= 2 * size


def test_delete_everything_leaves_nothing(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    i = store.record_detection(audio(0.1), 0.9, "v", EMB, time_s=T0)
    store.label(i, Label.TRUE_ACCEPT)
    store.update_settings(clip_retention_days=3)
    assert (root / "store.db-wal").exists()
    store.delete_everything()
    assert not root.exists() or list(root.iterdir()) == []


def test_export_contains_everything(store, tmp_path):
    ring = RingBuffer(2.0)
    ring.append(audio(2.0, seed=3))
    a = store.record_detection(audio(0.3, seed=1), 0.9, "v", EMB, time_s=T0)
    b = store.record_near_miss(audio(0.3, seed=2), 0.4, 0.5, "v", EMB * 2, time_s=T0 + 1)
    c = store.record_captured_miss(ring, 1.0, "v", time_s=T0 + 2)
    store.label(a, Label.TRUE_ACCEPT)
    store.label([b, c], Label.MISSED_WAKE_WORD)
    store.update_settings(near_miss_daily_quota=5)

    out = store.export(tmp_path / "export.zip")
    with zipfile.ZipFile(out) as z:
        doc = json.loads(z.read("store.json"))
        rows = {r["id"]: r for r in doc["detections"]}
        assert set(rows) == {a, b, c}
        assert [rows[i]["label"] for i in (a, b, c)] == ["true_accept", "missed_wake_word", "missed_wake_word"]
        assert rows[b]["kind"] == "near_miss" and np.array_equal(np.array(rows[b]["embeddings"], np.float32), EMB * 2)
        assert rows[c]["embeddings"] is None
        for i in (a, b, c):
            assert z.read(rows[i]["clip"]) == store.clip_path(store.get(i)).read_bytes()
        assert {n for n in z.namelist() if n.startswith("clips/")} == {f"clips/{n}" for n in clip_files(store)}
        assert doc["settings"]["near_miss_daily_quota"] == 5
        assert [(h["detection_id"], h["label"]) for h in doc["label_history"]] == [
            (a, "true_accept"), (b, "missed_wake_word"), (c, "missed_wake_word")]
    assert not (tmp_path / "export.zip.partial").exists()


# Schema version 1 exactly as it shipped: a frozen copy, so the test fails if migration 1 is edited.
V1_DDL = """
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
INSERT INTO meta VALUES ('schema_version', '1');
"""


def test_a_v1_database_migrates_forward_with_its_rows(tmp_path):
    root = tmp_path / "store"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "old.wav").write_bytes(b"RIFF....")  # content is not checked; existence is
    db = sqlite3.connect(root / "store.db")
    db.executescript(V1_DDL)
    db.execute("INSERT INTO detections VALUES (1, ?, 'detection', 0.8, 'kws-0.9', 'old.wav', ?, '[16, 8]')",
               (T0, EMB.tobytes()))
    db.execute("INSERT INTO detections VALUES (2, ?, 'captured_miss', NULL, 'kws-0.9', NULL, NULL, NULL)", (T0 + 1,))
    db.execute("INSERT INTO labels VALUES (1, 'true_accept', ?)", (T0 + 5,))
    db.commit()
    db.close()

    with Store(root) as store:
        r1, r2 = store.get(1), store.get(2)
        assert (r1.kind, r1.score, r1.model_version, r1.clip, r1.label, r1.labelled_at) == (
            Kind.DETECTION, 0.8, "kws-0.9", "old.wav", Label.TRUE_ACCEPT, T0 + 5)
        assert np.array_equal(r1.embeddings, EMB) and not r1.clip_missing and r1.learned_at is None
        assert (r2.kind, r2.score, r2.clip, r2.label) == (Kind.CAPTURED_MISS, None, None, None)
        # what version 2 added works on the old rows
        store.label(1, Label.FALSE_ACCEPT)
        assert store.undo_last_label() == (LabelChange(1, Label.FALSE_ACCEPT, Label.TRUE_ACCEPT),)
        assert store.update_settings(clip_retention_days=1).clip_retention_days == 1
        assert store.record_detection(audio(0.1), 0.9, "kws-1.0", EMB, time_s=T0 + 9) == 3
    db = sqlite3.connect(root / "store.db")
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    db.close()


def test_a_database_newer_than_the_code_is_refused(tmp_path):
    with Store(tmp_path / "s"):
        pass
    db = sqlite3.connect(tmp_path / "s" / "store.db")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}.*up to {SCHEMA_VERSION}"):
        Store(tmp_path / "s")


def write_detections(root: str, n: int) -> None:
    """Child process: the audio service writing detections as fast as it can."""
    with Store(Path(root)) as store:
        for k in range(n):
            store.record_detection(audio(0.05, seed=k), 0.9, "v", EMB, time_s=T0 + k)


def test_a_writer_process_and_a_labelling_process_lose_nothing(tmp_path):
    root = tmp_path / "store"
    with Store(root) as store:
        child = multiprocessing.get_context("spawn").Process(target=write_detections, args=(str(root), 500))
        child.start()
        labelled_while_writing = 0
        labels = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            writing = child.is_alive()
            queue = store.review_queue(limit=7)
            if not queue and not writing:
                break
            for n, r in enumerate(queue):  # single labels and bulk ones, interleaved with the writer
                labels[r.id] = (Label.TRUE_ACCEPT, Label.FALSE_ACCEPT)[r.id % 2]
                labelled_while_writing += writing
                if n % 2:
                    store.label(r.id, labels[r.id])
            store.label([r.id for n, r in enumerate(queue) if not n % 2 and r.id % 2], Label.FALSE_ACCEPT)
            store.label([r.id for n, r in enumerate(queue) if not n % 2 and not r.id % 2], Label.TRUE_ACCEPT)
        child.join(30)
        assert child.exitcode == 0
        assert labelled_while_writing > 0
        assert store.count() == 500 and store.count(unlabelled_only=True) == 0
        assert {r.id: r.label for r in store.review_queue(unlabelled_only=False, limit=1000)} == labels
        assert len(clip_files(store)) == 500


class StoreThatDiesBeforeCommit(Store):
    """A store whose process the test kills between a clip's write and its row's commit."""

    written = None  # a multiprocessing Event, set in the child

    def _clip_written(self, name: str) -> None:
        self.written.set()
        time.sleep(600)


def die_while_saving(root: str, written) -> None:
    StoreThatDiesBeforeCommit.written = written
    with StoreThatDiesBeforeCommit(Path(root)) as store:
        store.record_detection(audio(0.2), 0.9, "v", EMB, time_s=T0)


def test_a_crash_between_clip_and_commit_leaves_no_orphan(tmp_path):
    root = tmp_path / "store"
    with Store(root) as store:
        kept = store.record_detection(audio(0.1), 0.9, "v", EMB, time_s=T0 - 1)
    ctx = multiprocessing.get_context("spawn")
    written = ctx.Event()
    child = ctx.Process(target=die_while_saving, args=(str(root), written))
    child.start()
    assert written.wait(60)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert len(list((root / "clips").iterdir())) == 2  # the complete clip of the row that never committed
    # a partial clip left by a writer that died mid-write, and one a live process is writing right now
    (root / "clips" / f"dead.wav.{child.pid}.partial").write_bytes(b"RIFF")
    (root / "clips" / f"live.wav.{os.getpid()}.partial").write_bytes(b"RIFF")

    with Store(root) as store:  # the dead writer's lock is gone and its leftovers with it
        assert store.count() == 1
        assert clip_files(store) == {store.get(kept).clip, f"live.wav.{os.getpid()}.partial"}
        store.label(kept, Label.TRUE_ACCEPT)


def test_a_row_whose_clip_vanished_is_marked_missing(tmp_path):
    with Store(tmp_path / "s") as store:
        i = store.record_detection(audio(0.1), 0.9, "v", EMB, time_s=T0)
        store.clip_path(store.get(i)).unlink()
    with Store(tmp_path / "s") as store:
        r = store.get(i)
        assert r.clip is None and r.clip_missing and store.clip_path(r) is None

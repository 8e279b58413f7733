"""The device store: saved moments with their clips and embeddings, the owner's labels (with undo),
settings, the privacy ledger of learning rounds, the clerk's standing and jobs, retention, export and
delete-everything, under one directory:

    <root>/store.db (+ -wal, -shm)    SQLite in WAL mode, synchronous=FULL
    <root>/clips/*.wav                16 kHz mono int16

One `Store` per process: one connection behind a lock, shared by the process's threads (the audio
thread, the UI's workers); another process (the TUI beside the service) opens its own. WAL lets
readers run beside the writer; every write is a short BEGIN IMMEDIATE transaction, and the busy
timeout makes a writer wait for the other process instead of failing with "database is locked".

Invariant, kept across crashes: a row's `clip` names a complete file. A clip is written (and
fsynced) before its row commits, and removed only after the row stopped naming it; opening the
store deletes files no row names and marks rows whose file has vanished `clip_missing`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sqlite3
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from sda.sqlite import LockedDatabase, connect_sqlite

from ..audio import RingBuffer
from ..errors import StoreError
from .clips import PARTIAL_SUFFIX, clip_file, clip_name, is_abandoned, publish, write_partial
from .policy import RowState, in_near_miss_band, local_date, local_day, plan_retention
from .rows import (
    ClerkJob,
    ClerkStatus,
    Kind,
    Label,
    LabelChange,
    LearningRound,
    Record,
    RetentionReport,
    RoundStatus,
    Settings,
    Stats,
    encode_embeddings,
)
from .schema import SCHEMA_VERSION, migrate

# The columns of Record.from_row, in its order.
_SELECT = ("SELECT d.id, d.time, d.kind, d.score, d.model_version, d.clip, d.clip_missing, d.embeddings,"
           " d.embeddings_shape, l.label, l.labelled_at, d.learned_at"
           " FROM detections d LEFT JOIN labels l ON l.detection_id = d.id")


def _label(value: Label | str) -> Label:
    try:
        return Label(value)
    except ValueError:
        raise StoreError(f"label {value!r}: need one of {[v.value for v in Label]}") from None


class Store(LockedDatabase):
    """The device's saved moments, labels and settings under `root` (created if need be).

    `clock` gives unix seconds; every method taking `time_s`/`now_s` uses it when that is None."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time):
        self.root = Path(root)
        self.clip_dir = self.root / "clips"
        self.db_path = self.root / "store.db"
        self._clock = clock
        self._lock = threading.RLock()
        self.clip_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._db = connect_sqlite(self.db_path)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the device store {self.db_path}: {exc}") from exc
        try:
            migrate(self._db, self.db_path)
            self._recover()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot open the device store {self.db_path}: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the database (every committed row is already on disk)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """LockedDatabase's transaction, with a failure of the database itself (a full disk, an I/O error) as a
        StoreError naming the store, and the transaction rolled back even when COMMIT is what failed (SQLite
        may or may not roll back by itself after SQLITE_FULL or SQLITE_IOERR). IntegrityError passes through:
        the methods that expect one (a round or a job recorded twice) turn it into their own StoreError."""
        with self._lock:  # held until the rollback below: no other thread sees a half-failed transaction
            try:
                with super()._tx() as db:
                    yield db
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                raise StoreError(f"{'store full: ' if full else ''}the device store {self.db_path} could not be"
                                 f" written: {exc}; nothing of this change was saved") from exc

    def _recover(self) -> None:
        """Make rows and files agree after a crash. Runs under the write lock, under which every writer
        renames a clip to its final name and commits its row, so a final name no row holds is an orphan;
        a partial file is one only when the process writing it is gone."""
        with self._tx() as db:
            files = {p.name for p in self.clip_dir.iterdir() if p.is_file()}
            partial = {f for f in files if f.endswith(PARTIAL_SUFFIX)}
            named = {r[0] for r in db.execute("SELECT clip FROM detections WHERE clip IS NOT NULL")}
            db.executemany("UPDATE detections SET clip = NULL, clip_missing = 1 WHERE clip = ?",
                           [(n,) for n in named - files])
            for name in (files - partial - named) | {f for f in partial if is_abandoned(f)}:
                (self.clip_dir / name).unlink(missing_ok=True)

    def _now(self, time_s: float | None) -> float:
        return float(self._clock() if time_s is None else time_s)

    # --- saving moments -------------------------------------------------------------------------

    def record_detection(self, samples: np.ndarray, score: float, model_version: str,
                         embeddings: np.ndarray | None, time_s: float | None = None) -> int:
        """Save a detection: int16 `samples` (n,) as its clip, embeddings (window, embed). Returns its id."""
        saved = self._save(Kind.DETECTION, self._now(time_s), samples, embeddings, score, model_version)
        assert saved is not None  # only an `admit` refuses
        return saved

    def record_near_miss(self, samples: np.ndarray, score: float, threshold: float, model_version: str,
                         embeddings: np.ndarray | None, time_s: float | None = None) -> int | None:
        """Save a score just under `threshold` (the band and the daily quota are settings); its id, or
        None when the score is outside the band or today's quota is used up."""
        t = self._now(time_s)
        start, end = local_day(t)

        def admit(db: sqlite3.Connection) -> bool:
            settings = self._settings(db)
            (today,) = db.execute("SELECT COUNT(*) FROM detections WHERE kind = 'near_miss' AND time >= ?"
                                  " AND time < ?", (start, end)).fetchone()
            return in_near_miss_band(score, threshold, settings.near_miss_band) and (
                today < settings.near_miss_daily_quota)

        return self._save(Kind.NEAR_MISS, t, samples, embeddings, score, model_version, admit)

    def record_captured_miss(self, ring: RingBuffer, seconds: float, model_version: str,
                             embeddings: np.ndarray | None = None, score: float | None = None,
                             time_s: float | None = None) -> int:
        """Save "you missed me": the last `seconds` of `ring` as the clip. Returns its id."""
        saved = self._save(Kind.CAPTURED_MISS, self._now(time_s), ring.last(seconds), embeddings, score, model_version)
        assert saved is not None  # only an `admit` refuses
        return saved

    def _save(self, kind: Kind, t: float, samples: np.ndarray, embeddings: np.ndarray | None,
              score: float | None, model_version: str,
              admit: Callable[[sqlite3.Connection], bool] = lambda db: True) -> int | None:
        """Write the clip, then rename it and insert its row in one short transaction; None if `admit` refuses."""
        with self._lock:  # refuse early, before any audio reaches the disk
            if not admit(self._db):
                return None
        blob, shape = encode_embeddings(embeddings)
        name = clip_name(kind, t)
        # The slow part (writing and fsyncing the audio) runs outside the write lock, so a labelling UI
        # in another process is never held up by it.
        partial = write_partial(self.clip_dir, name, samples)
        final = clip_file(self.clip_dir, name)
        try:
            with self._tx() as db:
                if not admit(db):  # again under the write lock: the quota holds across processes
                    return None
                publish(partial, final)
                self._clip_written(name)
                cur = db.execute("INSERT INTO detections (time, kind, score, model_version, clip, embeddings,"
                                 " embeddings_shape) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (t, kind, score, model_version, name, blob, shape))
                return int(cur.lastrowid)  # type: ignore[arg-type]
        except BaseException:
            final.unlink(missing_ok=True)  # the row was rolled back
            raise
        finally:
            partial.unlink(missing_ok=True)  # still there only if refused or failed

    def _clip_written(self, name: str) -> None:
        """Called between a clip's write and its row's commit (a separate method so a test can crash here)."""

    # --- labels -----------------------------------------------------------------------------------

    def label(self, ids: int | Iterable[int], label: Label | str, time_s: float | None = None) -> None:
        """Label one row or many, in one transaction and as one undo step; relabelling replaces.
        StoreError, and nothing labelled, when an id names no row."""
        label = _label(label)
        ids = [ids] if isinstance(ids, int) else list(dict.fromkeys(ids))
        t = self._now(time_s)
        with self._tx() as db:
            (batch,) = db.execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM label_history").fetchone()
            for i in ids:
                row = db.execute("SELECT l.label, l.labelled_at FROM detections d LEFT JOIN labels l"
                                 " ON l.detection_id = d.id WHERE d.id = ?", (i,)).fetchone()
                if row is None:
                    raise StoreError(f"no row {i} in {self.db_path}; nothing was labelled")
                db.execute("INSERT INTO label_history (batch, detection_id, label, previous, previous_at)"
                           " VALUES (?, ?, ?, ?, ?)", (batch, i, label, *row))
                db.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?)", (i, label, t))

    def undo_last_label(self) -> tuple[LabelChange, ...]:
        """Take back the last labelling action (one row or a bulk one): each row gets its previous label,
        or none. Returns what was undone, empty when there is nothing to undo."""
        with self._tx() as db:
            (batch,) = db.execute("SELECT MAX(batch) FROM label_history").fetchone()
            rows = db.execute("SELECT detection_id, label, previous, previous_at FROM label_history"
                              " WHERE batch = ? ORDER BY seq DESC", (batch,)).fetchall()
            for i, _, previous, previous_at in rows:
                if previous is None:
                    db.execute("DELETE FROM labels WHERE detection_id = ?", (i,))
                else:
                    db.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?)", (i, previous, previous_at))
            db.execute("DELETE FROM label_history WHERE batch = ?", (batch,))
        return tuple(LabelChange(i, Label(lab), Label(prev) if prev else None) for i, lab, prev, _ in rows)

    def mark_learned(self, ids: Iterable[int], time_s: float | None = None) -> None:
        """Record that these rows went into a learning round: the next `apply_retention` removes their clips."""
        t = self._now(time_s)
        with self._tx() as db:
            db.executemany("UPDATE detections SET learned_at = ? WHERE id = ? AND learned_at IS NULL",
                           [(t, i) for i in ids])

    # --- what the UI reads ------------------------------------------------------------------------

    def review_queue(self, unlabelled_only: bool = True, limit: int = 50, offset: int = 0,
                     before: tuple[float, int] | None = None) -> list[Record]:
        """Rows newest first, for the owner to label. `before` (time_s, id) of a row starts the page just
        after that row: unlike an offset, it stays put while rows are labelled or new ones arrive."""
        where = ["l.label IS NULL"] if unlabelled_only else []
        args: tuple = ()
        if before is not None:
            where.append("(d.time, d.id) < (?, ?)")
            args = (float(before[0]), int(before[1]))
        sql = _SELECT + "".join(f"{' WHERE' if k == 0 else ' AND'} {w}" for k, w in enumerate(where))
        rows = self._q(sql + " ORDER BY d.time DESC, d.id DESC LIMIT ? OFFSET ?", (*args, limit, offset))
        return [Record.from_row(r) for r in rows]

    def count(self, unlabelled_only: bool = False) -> int:
        """How many rows `review_queue` pages through."""
        where = " WHERE l.label IS NULL" if unlabelled_only else ""
        return self._q("SELECT COUNT(*) FROM detections d LEFT JOIN labels l ON l.detection_id = d.id" + where)[0][0]

    def get(self, detection_id: int) -> Record | None:
        """One row, or None."""
        rows = self._q(_SELECT + " WHERE d.id = ?", (detection_id,))
        return Record.from_row(rows[0]) if rows else None

    def clip_path(self, record: Record) -> Path | None:
        """The absolute path of the row's clip, None when it has none (any more)."""
        return None if record.clip is None else clip_file(self.clip_dir, record.clip)

    def stats(self) -> Stats:
        """Rows per label: local accuracy as the owner judged it."""
        counts = dict(self._q("SELECT l.label, COUNT(*) FROM detections d LEFT JOIN labels l"
                              " ON l.detection_id = d.id GROUP BY l.label"))
        return Stats(**{v.value: counts.get(v.value, 0) for v in Label}, unlabelled=counts.get(None, 0))

    # --- learning rounds and the clerk (written by the federation client and the clerk) -----------

    def record_learning_round(self, r: LearningRound) -> None:
        """Add a round to the privacy ledger; StoreError for a round id already there (a round spends once)
        or a value out of range."""
        if r.status not in (known := [s.value for s in RoundStatus]):
            raise StoreError(f"learning round {r.round_id!r}: status {r.status!r}; need one of {known}")
        try:
            with self._tx() as db:
                db.execute("INSERT INTO learning_rounds VALUES (?, ?, ?, ?, ?, ?)",
                           (r.round_id, r.time_s, r.epsilon_spent, r.delta, str(r.status), r.label_count))
        except sqlite3.IntegrityError as exc:  # the id is taken, or a CHECK (epsilon >= 0, 0 <= delta < 1) failed
            raise StoreError(f"learning round {r.round_id!r} not recorded: {exc}") from None

    def learning_round(self, round_id: str) -> LearningRound | None:
        """The ledger's row of one round, or None when this device has not spent (or refused) it."""
        rows = self._q("SELECT round_id, time, epsilon_spent, delta, status, label_count FROM learning_rounds"
                       " WHERE round_id = ?", (round_id,))
        return next((LearningRound(i, t, e, d, RoundStatus(st), n) for i, t, e, d, st, n in rows), None)

    def learning_rounds(self, limit: int = 50) -> list[LearningRound]:
        """The latest rounds, newest first."""
        rows = self._q("SELECT round_id, time, epsilon_spent, delta, status, label_count FROM learning_rounds"
                       " ORDER BY time DESC, round_id DESC LIMIT ?", (limit,))
        return [LearningRound(i, t, e, d, RoundStatus(s), n) for i, t, e, d, s, n in rows]

    def privacy_spent(self) -> tuple[float, float]:
        """(epsilon, delta) spent by all rounds together, by basic composition (the sum): an upper bound."""
        eps, delta = self._q("SELECT COALESCE(SUM(epsilon_spent), 0), COALESCE(SUM(delta), 0) FROM learning_rounds")[0]
        return float(eps), float(delta)

    def set_clerk(self, opted_in: bool, stake: int, time_s: float | None = None) -> None:
        """Record the owner's clerk choice and the tokens staked."""
        if isinstance(stake, bool) or not isinstance(stake, int) or stake < 0:
            raise StoreError(f"clerk stake: got {stake!r}; need a whole number of tokens >= 0")
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO clerk_status VALUES (1, ?, ?, ?)",
                       (int(bool(opted_in)), stake, self._now(time_s)))

    def record_clerk_job(self, job_id: str, tokens: int, time_s: float | None = None) -> None:
        """Record an aggregation served on and what it earned (negative: a penalty); once per job."""
        try:
            with self._tx() as db:
                db.execute("INSERT INTO clerk_jobs VALUES (?, ?, ?)", (job_id, self._now(time_s), int(tokens)))
        except sqlite3.IntegrityError:
            raise StoreError(f"clerk job {job_id!r} is already recorded") from None

    def clerk_status(self) -> ClerkStatus:
        """Opt-in and stake (not opted in, no stake, until the owner answers) and the jobs' totals."""
        with self._lock:
            row = self._db.execute("SELECT opted_in, stake FROM clerk_status WHERE id = 1").fetchone()
            jobs, tokens = self._db.execute("SELECT COUNT(*), COALESCE(SUM(tokens), 0) FROM clerk_jobs").fetchone()
        opted_in, stake = row or (0, 0)
        return ClerkStatus(bool(opted_in), stake, jobs, tokens)

    def clerk_jobs(self, limit: int = 50) -> list[ClerkJob]:
        """The latest jobs, newest first."""
        rows = self._q("SELECT job_id, time, tokens FROM clerk_jobs ORDER BY time DESC, job_id DESC LIMIT ?",
                       (limit,))
        return [ClerkJob(*r) for r in rows]

    # --- analytics counters (assistant.analytics checks the names; the store keeps what it is given) ----

    def count_events(self, counts: Mapping[str, int], time_s: float | None = None) -> None:
        """Add `counts` (event name -> n >= 0) to the counters of the local day holding `time_s`, in one
        transaction; StoreError for a negative or non-integer count (nothing added then)."""
        for name, n in counts.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise StoreError(f"analytics event {name!r}: count {n!r}; need a whole number >= 0")
        day = local_date(self._now(time_s))
        with self._tx() as db:
            db.executemany("INSERT INTO analytics_counts VALUES (?, ?, ?)"
                           " ON CONFLICT (day, event) DO UPDATE SET count = count + excluded.count",
                           [(day, name, n) for name, n in counts.items() if n])

    def event_counts(self, day: str) -> dict[str, int]:
        """The counters of local day `day` (YYYY-MM-DD), as counted (unclipped)."""
        return {e: int(n) for e, n in self._q("SELECT event, count FROM analytics_counts WHERE day = ?", (day,))}

    # --- settings and retention -------------------------------------------------------------------

    def settings(self) -> Settings:
        """The owner's settings (defaults for those never set)."""
        with self._lock:
            return self._settings(self._db)

    @staticmethod
    def _settings(db: sqlite3.Connection) -> Settings:
        return Settings.from_json(dict(db.execute("SELECT key, value FROM settings").fetchall()))

    def update_settings(self, **changes: object) -> Settings:
        """Change settings by name; StoreError naming a bad key or value. Returns the new settings."""
        with self._tx() as db:
            new = self._settings(db).replace(**changes)
            db.executemany("INSERT OR REPLACE INTO settings VALUES (?, ?)",
                           [(k, json.dumps(getattr(new, k))) for k in changes])
        return new

    def apply_retention(self, now_s: float | None = None) -> RetentionReport:
        """Remove the clips (and, if the owner asked, rows) the settings no longer allow (policy.plan_retention)."""
        now = self._now(now_s)
        with self._tx() as db:
            rows = db.execute("SELECT d.id, d.time, d.clip, l.label IS NOT NULL, d.learned_at IS NOT NULL"
                              " FROM detections d LEFT JOIN labels l ON l.detection_id = d.id").fetchall()
            clips = {i: name for i, _, name, _, _ in rows if name is not None}
            sizes = {i: self._size(name) for i, name in clips.items()}
            states = [RowState(i, t, sizes.get(i), bool(lab), bool(lrn)) for i, t, _, lab, lrn in rows]
            plan = plan_retention(states, self._settings(db), now)
            db.executemany("UPDATE detections SET clip = NULL WHERE id = ?", [(i,) for i in plan.strip_clip])
            db.executemany("DELETE FROM detections WHERE id = ?", [(i,) for i in plan.delete_row])
        # Files go only after the rows stopped naming them: a crash in between leaves orphans, which the
        # next open deletes, never a row naming a missing file.
        gone = [i for i in (*plan.strip_clip, *plan.delete_row) if i in clips]
        for i in gone:
            clip_file(self.clip_dir, clips[i]).unlink(missing_ok=True)
        return RetentionReport(len(gone), sum(sizes[i] for i in gone), len(plan.delete_row))

    def _size(self, name: str) -> int:
        try:
            return clip_file(self.clip_dir, name).stat().st_size
        except FileNotFoundError:
            return 0

    # --- the owner's rights -----------------------------------------------------------------------

    def export(self, path: Path) -> Path:
        """Write all the store holds to the zip file `path`: `store.json` (every row with its label and
        embeddings, the label history, the settings) and `clips/*.wav`. Returns `path`."""
        path = Path(path)
        with self._tx() as db:  # one consistent snapshot of every table; the clips are copied after
            records = [Record.from_row(r) for r in db.execute(_SELECT + " ORDER BY d.id")]
            history = db.execute("SELECT seq, batch, detection_id, label, previous, previous_at"
                                 " FROM label_history ORDER BY seq").fetchall()
            settings = self._settings(db)
            rounds = db.execute("SELECT round_id, time, epsilon_spent, delta, status, label_count"
                                " FROM learning_rounds ORDER BY time").fetchall()
            clerk = db.execute("SELECT opted_in, stake, updated_at FROM clerk_status").fetchall()
            jobs = db.execute("SELECT job_id, time, tokens FROM clerk_jobs ORDER BY time").fetchall()
            counters = db.execute("SELECT day, event, count FROM analytics_counts ORDER BY day, event").fetchall()
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            rows = []
            for r in records:
                row = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
                row["embeddings"] = None if r.embeddings is None else r.embeddings.tolist()
                if r.clip is not None:
                    try:
                        z.write(clip_file(self.clip_dir, r.clip), f"clips/{r.clip}")
                        row["clip"] = f"clips/{r.clip}"
                    except FileNotFoundError:  # retention in another process removed it after the snapshot
                        row["clip"] = None
                rows.append(row)
            keys = ("seq", "batch", "detection_id", "label", "previous", "previous_at")
            z.writestr("store.json", json.dumps({
                "schema_version": SCHEMA_VERSION, "exported_at": self._now(None),
                "settings": dataclasses.asdict(settings), "detections": rows,
                "label_history": [dict(zip(keys, h, strict=True)) for h in history],
                "learning_rounds": [dict(zip(("round_id", "time", "epsilon_spent", "delta", "status", "label_count"),
                                             r, strict=True)) for r in rounds],
                "clerk": {"status": [dict(zip(("opted_in", "stake", "updated_at"), c, strict=True)) for c in clerk],
                          "jobs": [dict(zip(("job_id", "time", "tokens"), j, strict=True)) for j in jobs]},
                "analytics_counts": [dict(zip(("day", "event", "count"), c, strict=True)) for c in counters]},
                indent=1))
        os.replace(partial, path)
        return path

    def delete_everything(self) -> None:
        """Delete every row, every clip and the database files, then `root` itself if nothing else is in
        it. The store is closed afterwards. Stop the service first: another process's open store sees
        no rows, and its next write fails."""
        with self._tx() as db:  # rows first, so a process that still has the database open sees them gone
            for table in ("label_history", "labels", "detections", "settings", "learning_rounds", "clerk_status",
                          "clerk_jobs", "analytics_counts"):
                db.execute(f"DELETE FROM {table}")
        with self._lock:
            self._db.close()
            shutil.rmtree(self.clip_dir, ignore_errors=True)
            for suffix in ("", "-wal", "-shm", "-journal"):
                self.db_path.with_name(self.db_path.name + suffix).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the owner keeps something else there: not ours to delete
                self.root.rmdir()

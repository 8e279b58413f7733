"""The device store's rows and settings as typed values, and how embeddings become bytes; no I/O."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from ..errors import StoreError


class Kind(StrEnum):
    """Why a row was saved: the detector fired, a score came close, or the owner said "you missed me"."""

    DETECTION = "detection"
    NEAR_MISS = "near_miss"
    CAPTURED_MISS = "captured_miss"


class Label(StrEnum):
    """What the owner says a row was."""

    TRUE_ACCEPT = "true_accept"
    FALSE_ACCEPT = "false_accept"
    MISSED_WAKE_WORD = "missed_wake_word"
    UNSURE = "unsure"


@dataclass(frozen=True, eq=False)  # eq=False: an ndarray field has no truth value for ==
class Record:
    """One saved moment with its label, if it has one. Times are unix seconds."""

    id: int
    time_s: float
    kind: Kind
    score: float | None  # None for a captured miss nobody scored
    model_version: str
    clip: str | None  # file name under the store's clip dir; None once retention removed it (or it was lost)
    clip_missing: bool  # the file vanished behind the store's back (found when the store was opened)
    embeddings: np.ndarray | None  # (window, embed) float32, read-only
    label: Label | None
    labelled_at: float | None
    learned_at: float | None

    @classmethod
    def from_row(cls, row: tuple) -> Record:
        """From (id, time, kind, score, model_version, clip, clip_missing, embeddings blob, embeddings shape,
        label, labelled_at, learned_at)."""
        id_, t, kind, score, model, clip, missing, blob, shape, label, labelled_at, learned_at = row
        return cls(id_, t, Kind(kind), score, model, clip, bool(missing), decode_embeddings(blob, shape),
                   Label(label) if label else None, labelled_at, learned_at)


@dataclass(frozen=True)
class LabelChange:
    """One label an undo took back: `label` was removed and `previous` (or no label) restored."""

    detection_id: int
    label: Label
    previous: Label | None


@dataclass(frozen=True)
class Stats:
    """Counts of rows per label, for the owner's view of local accuracy."""

    true_accept: int
    false_accept: int
    missed_wake_word: int
    unsure: int
    unlabelled: int

    @property
    def precision(self) -> float | None:
        """TA / (TA + FA), None before any detection is labelled."""
        judged = self.true_accept + self.false_accept
        return self.true_accept / judged if judged else None

    @property
    def misses(self) -> int:
        """Times the owner said the wake word and the device did not wake."""
        return self.missed_wake_word


@dataclass(frozen=True)
class RetentionReport:
    """What one pass of the retention policy removed."""

    clips_removed: int
    bytes_freed: int
    rows_deleted: int


@dataclass(frozen=True)
class Settings:
    """The owner's privacy and retention settings (the UI edits them; the store keeps them as JSON)."""

    clip_retention_days: float = 30.0
    storage_cap_bytes: int = 256 * 2**20  # ~2 h of 16 kHz int16 audio
    delete_rows_after_days: float | None = None  # None: rows (label, embeddings) outlive their clip
    near_miss_band: float = 0.3  # a near miss scores in [threshold - band, threshold)
    near_miss_daily_quota: int = 20  # near misses kept per local calendar day; 0 turns them off
    capture_seconds: float = 4.0  # how much audio "you missed me" saves, ending now
    learning_opt_in: bool = False  # take part in learning rounds (nothing leaves the device without it)
    epsilon_budget: float = 8.0  # the differential-privacy epsilon all learning rounds together may spend
    analytics_opt_in: bool = False  # send the daily usage counters, by secure aggregation

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, whole = getattr(self, f.name), f.name.endswith(("_bytes", "_quota"))
            if f.name.endswith("_opt_in"):
                if not isinstance(value, bool):
                    raise StoreError(f"setting {f.name}: got {value!r}; need true or false")
                continue
            if value is None and f.name == "delete_rows_after_days":
                continue
            if isinstance(value, bool) or not isinstance(value, int if whole else int | float) or value < 0:
                raise StoreError(f"setting {f.name}: got {value!r}; need a {'whole ' * whole}number >= 0")
        if self.capture_seconds == 0:
            raise StoreError("setting capture_seconds: got 0; need a number > 0")

    @classmethod
    def from_json(cls, stored: dict[str, str]) -> Settings:
        """From the settings table's key -> JSON text; keys this code does not know are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: json.loads(v) for k, v in stored.items() if k in names})

    def replace(self, **changes: object) -> Settings:
        """A copy with `changes`; StoreError naming an unknown key and the known ones."""
        names = sorted(f.name for f in dataclasses.fields(self))
        if unknown := sorted(set(changes) - set(names)):
            raise StoreError(f"unknown setting(s) {unknown}; known: {names}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


class RoundStatus(StrEnum):
    """How a learning round ended for this device."""

    COMPLETED = "completed"  # its noisy update went into the aggregate
    REFUSED = "refused"  # it stayed out: the round would have spent more than the budget left
    FAILED = "failed"  # the round broke off after the device had sent its shares


@dataclass(frozen=True)
class LearningRound:
    """One learning round this device took part in (or refused), with the privacy it spent."""

    round_id: str  # the coordinator's id for the round
    time_s: float
    epsilon_spent: float  # 0 for a refused round
    delta: float
    status: RoundStatus
    label_count: int  # labelled examples the device's gradient was computed over


@dataclass(frozen=True)
class ClerkJob:
    """One aggregation this device served on as a clerk; `tokens` < 0 is a penalty."""

    job_id: str  # the aggregation's id
    time_s: float
    tokens: int


@dataclass(frozen=True)
class ClerkStatus:
    """The device's clerk standing: whether the owner opted in, its stake, and its jobs so far."""

    opted_in: bool
    stake: int  # tokens
    jobs_done: int
    tokens_earned: int  # rewards less penalties, over all jobs


def encode_embeddings(embeddings: np.ndarray | None) -> tuple[bytes | None, str | None]:
    """(window, embed) array -> (little-endian float32 bytes, shape as JSON); (None, None) for None."""
    if embeddings is None:
        return None, None
    a = np.ascontiguousarray(embeddings, "<f4")
    if a.ndim != 2:
        raise StoreError(f"embeddings must be (window, embed); got shape {a.shape}")
    return a.tobytes(), json.dumps(list(a.shape))


def decode_embeddings(blob: bytes | None, shape: str | None) -> np.ndarray | None:
    """The inverse of `encode_embeddings`."""
    if blob is None or shape is None:
        return None
    return np.frombuffer(blob, "<f4").reshape(json.loads(shape))

"""What the store keeps: the near-miss band and daily quota, and the retention plan. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .rows import Settings

DAY_S = 86_400.0


def in_near_miss_band(score: float, threshold: float, band: float) -> bool:
    """True when `score` is in [threshold - band, threshold): close enough to be worth a label."""
    return threshold - band <= score < threshold


def local_day(time_s: float) -> tuple[float, float]:
    """[start, end) in unix seconds of the local calendar day holding `time_s`.

    Naive local datetimes go through mktime, so a day with a DST change is 23 or 25 hours long."""
    start = datetime.combine(datetime.fromtimestamp(time_s).date(), datetime.min.time())
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def local_date(time_s: float) -> str:
    """The local calendar day holding `time_s`, as YYYY-MM-DD (the key of a day's analytics counters)."""
    return datetime.fromtimestamp(time_s).date().isoformat()


@dataclass(frozen=True)
class RowState:
    """What retention needs to know of one row."""

    id: int
    time_s: float
    clip_bytes: int | None  # None: the row has no clip
    labelled: bool
    learned: bool


@dataclass(frozen=True)
class RetentionPlan:
    """Rows whose clip goes (the row stays) and rows that go altogether; ids ascending."""

    strip_clip: tuple[int, ...]
    delete_row: tuple[int, ...]


def plan_retention(rows: Sequence[RowState], settings: Settings, now_s: float) -> RetentionPlan:
    """Apply the owner's settings at time `now_s`.

    A clip goes when it was learned from or is older than `clip_retention_days`; then, while the clips
    left exceed `storage_cap_bytes`, unlabelled clips go before labelled ones (a labelled clip is
    the owner's work and not yet learned from), oldest first. A row goes only when
    `delete_rows_after_days` is set and it is older than that."""
    days = settings.delete_rows_after_days
    delete = {r.id for r in rows if days is not None and r.time_s < now_s - days * DAY_S}
    expiry = now_s - settings.clip_retention_days * DAY_S
    with_clip = [r for r in rows if r.clip_bytes is not None and r.id not in delete]
    strip = {r.id for r in with_clip if r.learned or r.time_s < expiry}
    kept = sorted((r for r in with_clip if r.id not in strip), key=lambda r: (r.labelled, r.time_s, r.id))
    total = sum(r.clip_bytes or 0 for r in kept)
    for r in kept:
        if total <= settings.storage_cap_bytes:
            break
        strip.add(r.id)
        total -= r.clip_bytes or 0
    return RetentionPlan(tuple(sorted(strip)), tuple(sorted(delete)))

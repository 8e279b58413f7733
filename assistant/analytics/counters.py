"""The counting API the service and the TUI call (the I/O shell around registry.py): names are checked
against the registry before anything is written, so a typo fails loudly in tests instead of vanishing.

    count(store, "detection.accepted")
    count_many(store, {"label.false_accept": 3, "tui.key.n": 3})
    day_counts(store, "2026-11-26") -> the day's clipped vector (what an analytics round would send)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

import numpy as np

from ..store import Store
from .registry import check_event, day_vector

log = logging.getLogger(__name__)


def count(store: Store, event: str, n: int = 1, time_s: float | None = None) -> None:
    """Add `n` to today's (or `time_s`'s local day's) counter of `event`; UnknownEvent for a name not registered."""
    count_many(store, {event: n}, time_s)


def count_many(store: Store, counts: Mapping[str, int], time_s: float | None = None) -> None:
    """Add several counters at once, in one transaction; nothing is written if one name is unknown."""
    for name in counts:
        check_event(name)
    store.count_events(counts, time_s)


def day_counts(store: Store, day: str) -> np.ndarray:
    """Day `day`'s counters clipped to their declared ranges: (d,) int64 in registry order."""
    return day_vector(store.event_counts(day))


def count_at_hour(store: Store, event: str, time_s: float) -> None:
    """Count `event` and its local hour-of-day counter (`{event's family}.hour_HH`) for a moment at `time_s`:
    e.g. detection.accepted at 07:42 also counts detection.hour_07."""
    family = event.partition(".")[0]
    count_many(store, {event: 1, f"{family}.hour_{datetime.fromtimestamp(time_s).hour:02d}": 1}, time_s)


def count_quietly(store: Store, event: str, n: int = 1, time_s: float | None = None) -> None:
    """`count`, for code paths a counter must never break (an error handler, a round, an install): any failure
    (a locked or full store, a closed one) is logged at debug level and dropped."""
    try:
        count(store, event, n, time_s)
    except Exception as exc:  # a usage counter is never worth the code path it sits in
        log.debug("analytics counter %s not counted: %s", event, exc)

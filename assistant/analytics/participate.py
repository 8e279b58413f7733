"""The device's side of the daily analytics aggregation (issue 8 part 2): answers sda announces with id
`analytics.{YYYY-MM-DD}` with that day's clipped counters, when the owner allows it.

    analytics = AnalyticsClient(store)
    learning = LearningClient(store, ..., fallback=analytics.provide)   # one participant client for both
    # or, analytics alone: analytics.participant_client(config, identity).start()

A device whose owner has not opted in (Settings.analytics_opt_in, off by default) returns None: sda's
participant client then sends nothing at all for the day. It also stays out of a day whose announce it cannot
do safely: another layout (dimension), noise not added by clerks as Skellam, a scale other than 1 (the
sensitivity is computed for integer counters), a clip range narrower than the declared ranges, noise too small
for the device's own epsilon ceiling, or a day that has not ended yet (local time).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

import numpy as np

from sda import crypto
from sda.protocol.messages import Announce
from sda.services.participant import ParticipantClient, ParticipantConfig, ParticipationLog
from sda.services.report import analytics_day

from ..learning.privacy import DEFAULT_DELTA
from ..store import Store
from .counters import day_counts
from .privacy import day_privacy
from .registry import REGISTRY, max_counts

log = logging.getLogger(__name__)

#: The most epsilon one day's release may cost this device (a coordinator announcing less noise is refused).
DEFAULT_MAX_DAY_EPSILON = 2.0


class AnalyticsClient:
    """Answers analytics announces from `store`'s counters. Thread-safe (sda calls it on its connection thread)."""

    def __init__(self, store: Store, max_day_epsilon: float = DEFAULT_MAX_DAY_EPSILON, delta: float = DEFAULT_DELTA,
                 today: Callable[[], dt.date] = dt.date.today,
                 fallback: Callable[[Announce], np.ndarray | None] | None = None):
        self.store, self.max_day_epsilon, self.delta, self.today = store, max_day_epsilon, delta, today
        self.fallback = fallback
        self._lock = threading.Lock()
        self.sent: dict[str, np.ndarray] = {}  # days provided, by aggregation id: what went into sda
        self.refused: dict[str, str] = {}  # days this device stayed out of, and why

    def provide(self, a: Announce) -> np.ndarray | None:
        """ParticipantClient's `provide`: the day's clipped counters (d,) float64, or None (nothing is sent)."""
        day = analytics_day(a.aggregation_id)
        if day is None:
            return self.fallback(a) if self.fallback is not None else None
        with self._lock:
            reason = self._refusal(a, day)
            if reason is not None:
                self.refused[a.aggregation_id] = reason
                log.info("analytics %s: not taking part: %s", a.aggregation_id, reason)
                return None
            x = day_counts(self.store, day)
            self.sent[a.aggregation_id] = x
            log.info("analytics %s: sending %d counters (%d events)", a.aggregation_id, x.size, int(x.sum()))
            return x.astype(np.float64)

    def _refusal(self, a: Announce, day: str) -> str | None:
        """Why this device must not answer `a`, or None."""
        if not self.store.settings().analytics_opt_in:
            return "the owner has not opted in to analytics"
        if a.dimension != len(REGISTRY):
            return f"dimension {a.dimension}, this device's registry has {len(REGISTRY)} events"
        if (a.noise_mechanism, a.noise_added_by) != ("skellam", "clerks"):
            return f"noise {a.noise_mechanism!r} added by {a.noise_added_by!r}; need Skellam added by clerks"
        if a.scale != 1.0:
            return f"scale {a.scale}; counters are sent as integers (scale 1)"
        if a.clip_lo > 0 or a.clip_hi < int(max_counts().max()):
            return f"clip range [{a.clip_lo}, {a.clip_hi}] cuts the declared ranges [0, {int(max_counts().max())}]"
        epsilon = day_privacy(a.noise_sigma, self.delta).epsilon
        if epsilon > self.max_day_epsilon:
            return f"noise std {a.noise_sigma:.4g} gives epsilon {epsilon:.3g} > this device's {self.max_day_epsilon}"
        # A day takes part once (sda's participation log): sent early, its later events would never be counted.
        if dt.date.fromisoformat(day) >= self.today():
            return f"day {day} has not ended yet"
        return None

    def participant_client(self, config: ParticipantConfig, identity: crypto.Identity,
                           log_: ParticipationLog | None = None) -> ParticipantClient:
        """An sda participant client answering analytics announces only."""
        return ParticipantClient(config, identity, self.provide, log_)

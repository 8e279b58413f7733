"""When the coordinator requests a day's analytics aggregation (issue 8): each finished local day once, `grace_s`
after its midnight (devices answer only for a day that is over, and a clock a little behind should not make them
refuse), and at start-up for yesterday if that was never requested. `due_day` is pure; `DailyAnalytics` is the
coordinator's I/O around it, idempotent through the coordinator's store (an aggregation id is created once).

    schedule = DailyAnalytics(coordinator, AnalyticsConfig(epsilon=1.0), grace_s=600)
    schedule.tick()   # from the coordinator's loop: requests a due day, returns the days revealed since
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Container
from dataclasses import dataclass

from sda.services.coordinator import Coordinator
from sda.services.report import analytics_id

from .coordinate import AnalyticsConfig, request_day

log = logging.getLogger(__name__)


def due_day(now: dt.datetime, grace_s: float, requested: Container[str]) -> str | None:
    """The day (YYYY-MM-DD) to request at local time `now`: yesterday once `grace_s` seconds of today have
    passed, unless it is in `requested`; None otherwise. Only yesterday: an older day's devices may have pruned
    nothing, but a coordinator down for days asks for the day it can still get the most answers for."""
    midnight = dt.datetime.combine(now.date(), dt.time(0), tzinfo=now.tzinfo)
    if (now - midnight).total_seconds() < grace_s:
        return None
    day = (now.date() - dt.timedelta(days=1)).isoformat()
    return None if day in requested else day


@dataclass(frozen=True)
class RevealedDay:
    """A day whose aggregation ended: its day, devices summed, and the stated (epsilon, delta); or its error."""

    day: str
    participants: int
    epsilon: float | None
    delta: float | None
    error: str | None = None

    def describe(self) -> str:
        """One line for the log and stdout."""
        if self.error is not None:
            return f"analytics {self.day}: no sum ({self.error})"
        return (f"analytics {self.day}: revealed over {self.participants} devices, (epsilon, delta) ="
                f" ({self.epsilon:.3g}, {self.delta:g}) per device")


class _Requested:
    """`in` over the coordinator's store: a day is requested when its aggregation exists."""

    def __init__(self, coordinator: Coordinator):
        self.coordinator = coordinator

    def __contains__(self, day: object) -> bool:
        return self.coordinator.store.aggregation(analytics_id(str(day))) is not None


class DailyAnalytics:
    """Requests each due day on `coordinator` and reports the days it requested once they end."""

    def __init__(self, coordinator: Coordinator, config: AnalyticsConfig, grace_s: float = 600.0,
                 now: Callable[[], dt.datetime] = dt.datetime.now):
        self.coordinator, self.config, self.grace_s, self.now = coordinator, config, grace_s, now
        self.pending: set[str] = set()  # requested (here or by an earlier run) and not ended yet

    def start(self) -> None:
        """Take over yesterday's aggregation if an earlier run requested it and it has not ended."""
        day = (self.now().date() - dt.timedelta(days=1)).isoformat()
        row = self.coordinator.store.aggregation(analytics_id(day))
        if row is not None and row.state not in ("revealed", "failed"):
            self.pending.add(day)

    def tick(self) -> list[RevealedDay]:
        """Request the due day if any; the pending days that ended since the last tick."""
        day = due_day(self.now(), self.grace_s, _Requested(self.coordinator))
        if day is not None and request_day(self.coordinator, day, self.config):
            log.info("analytics %s: aggregation requested", day)
            self.pending.add(day)
        ended = []
        for day in sorted(self.pending):
            row = self.coordinator.store.aggregation(analytics_id(day))
            if row is None or row.state not in ("revealed", "failed"):
                continue
            self.pending.discard(day)
            spec = row.spec or {}
            if row.state == "failed":
                ended.append(RevealedDay(day, 0, None, None, row.error or "failed"))
            else:
                ended.append(RevealedDay(day, int((row.result or {}).get("participants", 0)),
                                         spec.get("dp_epsilon"), spec.get("dp_delta")))
        return ended

"""What `assistant analytics status|opt-in|opt-out|show` does to the device store (the CLI parses and prints;
this module reads and writes). `show` is the owner's look at exactly what a day's answer would hold."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import AssistantError
from ..learning.privacy import DEFAULT_DELTA
from ..store import Store
from .participate import DEFAULT_MAX_DAY_EPSILON
from .registry import REGISTRY, day_vector


@dataclass(frozen=True)
class AnalyticsStatus:
    """The owner's view of analytics on this device."""

    opted_in: bool
    max_day_epsilon: float  # a day whose announced noise costs more is refused
    delta: float
    events: int  # counters in a day's vector
    last_day: str  # the last finished local day: the next one an announce may ask for
    last_day_total: int  # the sum of its clipped counters

    def as_json(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        """The status as lines of text."""
        return "\n".join([
            f"analytics:       {'opted in' if self.opted_in else 'not opted in (assistant analytics opt-in)'}",
            f"privacy per day: at most epsilon {self.max_day_epsilon:g} (delta {self.delta:g}); a day announcing"
            " less noise is refused",
            f"counters:        {self.events} per day, each clipped to its declared range",
            f"last day:        {self.last_day}: {self.last_day_total} events counted"
            f" (assistant analytics show --day {self.last_day})",
        ])


@dataclass(frozen=True)
class DayCounter:
    """One counter of a day: as counted, as it would be sent (clipped) and its declared range's top."""

    name: str
    counted: int
    sent: int
    max_count: int


def _open(store_root: Path) -> Store:
    if not (Path(store_root) / "store.db").exists():
        raise AssistantError(f"no store in {store_root} (nothing saved yet, or give --store DIR)")
    return Store(store_root)


def last_day(today: dt.date | None = None) -> str:
    """Yesterday (local), YYYY-MM-DD: the latest day a device answers for."""
    return ((today or dt.date.today()) - dt.timedelta(days=1)).isoformat()


def parse_day(text: str) -> str:
    """A YYYY-MM-DD day, checked; AssistantError naming the value otherwise."""
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise AssistantError(f"--day {text!r}: need a date as YYYY-MM-DD") from None


def status(store_root: Path, today: dt.date | None = None) -> AnalyticsStatus:
    """Read the analytics status of the store at `store_root`."""
    day = last_day(today)
    with _open(store_root) as store:
        opted_in, counts = store.settings().analytics_opt_in, store.event_counts(day)
    return AnalyticsStatus(opted_in, DEFAULT_MAX_DAY_EPSILON, DEFAULT_DELTA, len(REGISTRY), day,
                           int(day_vector(counts).sum()))


def set_opt_in(store_root: Path, opted_in: bool) -> None:
    """Opt in or out of the daily analytics (checked at each announce: a running service follows at once)."""
    with Store(store_root) as store:
        store.update_settings(analytics_opt_in=opted_in)


def day_counters(store_root: Path, day: str) -> list[DayCounter]:
    """Every counter of local day `day`, in the vector's order: what an answer for that day would hold."""
    with _open(store_root) as store:
        counts = store.event_counts(day)
    sent = day_vector(counts)
    return [DayCounter(k.name, int(counts.get(k.name, 0)), int(x), k.max_count)
            for k, x in zip(REGISTRY, sent, strict=True)]

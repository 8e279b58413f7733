"""Reports of revealed daily counters (`sda analytics report --day D`): a table of each coordinate's revealed
value with its noise std, and a PNG chart with error bars.

Generic by construction: sda knows nothing of the product's events. The names of the coordinates and the
(epsilon, delta) of the release reach the report through the aggregation's stored spec (AggregationSpec.labels,
dp_epsilon, dp_delta), written by whoever requested the day's aggregation. The one convention sda fixes is the
id of a day's aggregation, `analytics.{YYYY-MM-DD}` (analytics_id), which devices use to recognise it.

Noise std of a coordinate, in value units: with clerk noise each of the `noise_participants` clerks whose share
is in the sum added variance sigma^2 / (n - t) (sda.noise), so the std is sigma * sqrt(m / (n - t)) / scale;
with participant noise it is sigma / scale (the announce's total).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SdaError
from ..simulation import default_thresholds

ANALYTICS_PREFIX = "analytics"


def analytics_id(day: str) -> str:
    """The aggregation id of day `day` (YYYY-MM-DD); SdaError for anything that is not a calendar day."""
    return f"{ANALYTICS_PREFIX}.{parse_day(day).isoformat()}"


def parse_day(day: str) -> dt.date:
    """`day` as a date; SdaError naming it otherwise."""
    try:
        parsed = dt.date.fromisoformat(day)
    except (TypeError, ValueError):
        raise SdaError(f"day {day!r}: need a calendar day as YYYY-MM-DD") from None
    if parsed.isoformat() != day:
        raise SdaError(f"day {day!r}: need a calendar day as YYYY-MM-DD")
    return parsed


def analytics_day(aggregation_id: str) -> str | None:
    """The day an analytics aggregation id names, or None for any other id."""
    prefix, _, day = aggregation_id.partition(".")
    if prefix != ANALYTICS_PREFIX:
        return None
    try:
        return parse_day(day).isoformat()
    except SdaError:
        return None


@dataclass(frozen=True)
class CounterRow:
    """One revealed coordinate."""

    name: str
    value: float
    std: float


@dataclass(frozen=True)
class DayReport:
    """A revealed day: its rows, how many devices are in it, and the release's stated privacy."""

    aggregation_id: str
    participants: int
    rows: tuple[CounterRow, ...]
    epsilon: float | None
    delta: float | None


def noise_std(spec: dict[str, Any], noise_participants: int) -> float:
    """The std of the noise in each revealed coordinate, in value units (see the module doc)."""
    sigma, scale = float(spec.get("noise_sigma", 0.0)), float(spec.get("scale", 1.0))
    if spec.get("noise_added_by") == "clerks" and sigma > 0:
        n = int(spec.get("committee_size") or noise_participants)
        t = spec.get("t") or default_thresholds(n)[1]
        return sigma * math.sqrt(noise_participants / (n - int(t))) / scale
    return sigma / scale


def day_report(aggregation_id: str, state: str, spec: dict[str, Any], result: dict[str, Any] | None,
               error: str | None = None) -> DayReport:
    """The report of a stored aggregation; SdaError when it is not revealed."""
    if state != "revealed" or result is None:
        raise SdaError(f"{aggregation_id} is {state}, not revealed" + (f": {error}" if error else ""))
    values = [float(v) for v in result["values"]]
    labels = list(spec.get("labels") or ()) or [f"x[{i}]" for i in range(len(values))]
    if len(labels) != len(values):
        raise SdaError(f"{aggregation_id}: {len(labels)} labels for {len(values)} revealed values")
    std = noise_std(spec, int(result.get("noise_participants", 0)))
    rows = tuple(CounterRow(n, v, std) for n, v in zip(labels, values, strict=True))
    return DayReport(aggregation_id, int(result["participants"]), rows, spec.get("dp_epsilon"), spec.get("dp_delta"))


def format_table(r: DayReport) -> str:
    """The report as a text table."""
    width = max([len("counter"), *(len(row.name) for row in r.rows)])
    privacy = ("privacy not stated" if r.epsilon is None
               else f"({r.epsilon:.3g}, {r.delta:.3g})-DP per device")
    lines = [f"{r.aggregation_id}: {r.participants} devices, {privacy}",
             f"{'counter':<{width}}  {'value':>10}  {'noise std':>10}"]
    lines += [f"{row.name:<{width}}  {row.value:>10.1f}  {row.std:>10.1f}" for row in r.rows]
    return "\n".join(lines)


def write_chart(r: DayReport, path: Path) -> Path:
    """A horizontal bar chart of the counters with +-1 std error bars, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display: reports run on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.16 * len(r.rows) + 1.5)))
    try:
        ys = range(len(r.rows))
        ax.barh(list(ys), [row.value for row in r.rows], xerr=[row.std for row in r.rows], capsize=1.5,
                color="#4c72b0", ecolor="#333333")
        ax.set_yticks(list(ys), [row.name for row in r.rows], fontsize=5)
        ax.invert_yaxis()
        ax.axvline(0, color="#999999", linewidth=0.5)
        eps = "" if r.epsilon is None else f", ({r.epsilon:.3g}, {r.delta:.3g})-DP"
        ax.set_title(f"{r.aggregation_id}: {r.participants} devices{eps}; bars +-1 noise std", fontsize=8)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path

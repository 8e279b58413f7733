"""The analytics event registry (issue 8): every usage counter a device may report, each with the integer
range [0, max_count] its daily count is clipped to, and the fixed vector layout a day's counters are sent in.
Pure: no I/O, no clock.

The layout is the registry's order: coordinate i of a day's vector is REGISTRY[i]. An event is only ever
added at the end (a device and the coordinator must agree on the layout of every day they both know), and
the registry's fingerprint (`layout_id`) goes with every day's request so a mismatch is caught, not summed.

The ranges are the whole of the privacy story: they bound one device's contribution to a day's sum
(privacy.sensitivities), so they are kept small; a busy device's extra events are clipped, not sent.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import AssistantError

NAME = re.compile(r"[a-z0-9_+!.-]{1,64}")


class UnknownEvent(AssistantError):
    """An event name the registry does not hold."""


@dataclass(frozen=True)
class EventKind:
    """One counter: its dotted name, the most one device may report of it per day, and what it counts."""

    name: str
    max_count: int
    description: str

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise AssistantError(f"event name {self.name!r}: need 1-64 of a-z 0-9 _ + ! . -")
        if isinstance(self.max_count, bool) or not isinstance(self.max_count, int) or self.max_count < 1:
            raise AssistantError(f"event {self.name}: max_count {self.max_count!r}; need a whole number >= 1")


def _events() -> tuple[EventKind, ...]:
    e = EventKind
    out = [
        e("detection.accepted", 200, "wake word detections the service acted on"),
        e("detection.rejected_by_verifier", 100, "detections the personal verifier turned down"),
        e("near_miss.saved", 50, "near misses kept for labelling"),
        e("near_miss.over_quota", 50, "near misses dropped because the day's quota was used up"),
        e("captured_miss.saved", 50, "'you missed me' clips saved"),
    ]
    # Labels the owner gave: a false_accept label is a labelled false accept, missed_wake_word a miss.
    out += [e(f"label.{v}", 100, f"rows labelled {v}") for v in
            ("true_accept", "false_accept", "missed_wake_word", "unsure")]
    out += [e("label.undo", 50, "labelling actions undone")]
    # TUI key presses, per key (what the owner actually uses).
    keys = ("y", "n", "m", "u", "z", "space", "a", "escape", "f", "p", "!", "r", "1", "2", "3", "q", "ctrl+s")
    out += [e(f"tui.key.{k}", 100, f"presses of {k!r} in the TUI") for k in keys]
    out += [e("tui.opened", 20, "TUI sessions started"), e("tui.settings_saved", 20, "settings saved from the TUI")]
    errors = ("audio_overrun", "audio_device_lost", "model_load", "store_write", "store_full", "clip_write",
              "broker_unreachable", "release_bad_signature", "release_invalid", "verifier_train", "config_invalid",
              "hermes_publish", "participation_refused", "unexpected")
    out += [e(f"error.{k}", 20, f"errors of kind {k}") for k in errors]
    # Uptime: one bucket per day is 1 (how long the service ran that day), so the sum is a histogram of devices.
    out += [e(f"uptime.hours_{b}", 1, f"the service ran {b.replace('_', '-')} hours this day")
            for b in ("0_1", "1_4", "4_8", "8_12", "12_18", "18_24")]
    out += [e("service.started", 20, "service starts"), e("service.reloaded", 20, "model hot-swaps")]
    out += [e(f"model.install.{k}", 5, f"model installs: {k}") for k in ("release", "rollback", "shipped")]
    out += [e(f"model.refused.{k}", 5, f"releases refused: {k}") for k in ("signature", "validation", "backbone")]
    out += [e(f"learning.{k}", 5, f"learning rounds {k.replace('_', ' ')}") for k in
            ("taken", "refused_budget", "refused_labels", "refused_opt_out", "refused_params", "failed")]
    # When in the day detections and near misses happen (local hour).
    out += [e(f"detection.hour_{h:02d}", 30, f"detections in local hour {h:02d}") for h in range(24)]
    out += [e(f"near_miss.hour_{h:02d}", 10, f"near misses in local hour {h:02d}") for h in range(24)]
    return tuple(out)


#: Every event kind, in vector order. Append only.
REGISTRY: tuple[EventKind, ...] = _events()
INDEX: Mapping[str, int] = {k.name: i for i, k in enumerate(REGISTRY)}
if len(INDEX) != len(REGISTRY):  # pragma: no cover - a registry edit that repeats a name
    raise AssertionError("duplicate event names in the analytics registry")


def max_counts(registry: tuple[EventKind, ...] = REGISTRY) -> np.ndarray:
    """The declared ranges' upper ends: (d,) int64."""
    return np.array([k.max_count for k in registry], np.int64)


def names(registry: tuple[EventKind, ...] = REGISTRY) -> tuple[str, ...]:
    """The event names in vector order."""
    return tuple(k.name for k in registry)


def layout_id(registry: tuple[EventKind, ...] = REGISTRY) -> str:
    """A short fingerprint of names and ranges in order: devices and coordinator compare it, not trust it."""
    text = "\n".join(f"{k.name}:{k.max_count}" for k in registry)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_event(name: str) -> int:
    """The coordinate of event `name`; UnknownEvent naming it otherwise."""
    try:
        return INDEX[name]
    except KeyError:
        raise UnknownEvent(f"unknown analytics event {name!r}; see assistant.analytics.registry.REGISTRY") from None


def day_vector(counts: Mapping[str, int], registry: tuple[EventKind, ...] = REGISTRY) -> np.ndarray:
    """A day's counters as the clipped vector that is sent: (d,) int64, coordinate i in [0, registry[i].max_count].

    Events not in `counts` are 0; unknown names are an error (a typo must not vanish silently); negative
    counts clip to 0, counts above the range to its max."""
    index = {k.name: i for i, k in enumerate(registry)}
    x = np.zeros(len(registry), np.int64)
    for name, n in counts.items():
        if name not in index:
            raise UnknownEvent(f"unknown analytics event {name!r} in a day's counts")
        x[index[name]] = int(n)
    return np.clip(x, 0, max_counts(registry))

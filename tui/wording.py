"""The words the UI shows for the store's values: labels, kinds, times, sizes. No I/O."""

from __future__ import annotations

from datetime import datetime, tzinfo

from assistant.store import Kind, Label

#: What each label is called on screen, and the key that sets it.
LABEL_WORDS: dict[Label, str] = {
    Label.TRUE_ACCEPT: "right",
    Label.FALSE_ACCEPT: "false alarm",
    Label.MISSED_WAKE_WORD: "missed",
    Label.UNSURE: "unsure",
}
LABEL_KEYS: dict[str, Label] = {"y": Label.TRUE_ACCEPT, "n": Label.FALSE_ACCEPT, "m": Label.MISSED_WAKE_WORD,
                                "u": Label.UNSURE}
KIND_WORDS: dict[Kind, str] = {Kind.DETECTION: "detection", Kind.NEAR_MISS: "near miss",
                               Kind.CAPTURED_MISS: "missed me"}


def label_word(label: Label | None) -> str:
    """'right', 'false alarm', 'missed', 'unsure', or '-' for no label."""
    return "-" if label is None else LABEL_WORDS[label]


def when(time_s: float, tz: tzinfo | None) -> str:
    """Unix seconds as 'YYYY-MM-DD HH:MM:SS' in `tz` (None: the machine's local time)."""
    return datetime.fromtimestamp(time_s, tz).strftime("%Y-%m-%d %H:%M:%S")


def score_text(score: float | None) -> str:
    """A score with two decimals, '-' when nobody scored it."""
    return "-" if score is None else f"{score:.2f}"


def duration(seconds: float) -> str:
    """'3 h 12 min', '12 min 5 s', '4.0 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {s} s"

"""The selected row in full: when, what, its score and the score over time, model, label, clip."""

from __future__ import annotations

from datetime import tzinfo

from rich.text import Text
from textual.widgets import Static

from assistant.store import Record, Store

from ..wording import KIND_WORDS, label_word, score_text, when
from .plot import score_rows
from .scores import ScoreCurve

LEGEND = "y right · n false alarm · m missed · u unsure"
_AXIS = 5  # "1.0 ▕" in front of the plot


class DetailPane(Static):
    """Shows one Record and, once a worker has computed it, its ScoreCurve."""

    def __init__(self, store: Store, tz: tzinfo | None, *, id: str | None = None):
        super().__init__(id=id)
        self.store, self.tz = store, tz
        self.record: Record | None = None
        self.curve: ScoreCurve | None = None
        self.picked = 0
        self.border_subtitle = LEGEND

    def show(self, record: Record | None, curve: ScoreCurve | None = None, picked: int = 0) -> None:
        """Show `record` (None: nothing selected) with `curve` (None: still computing)."""
        self.record, self.curve, self.picked = record, curve, picked
        self._render_now()

    def on_resize(self) -> None:
        self._render_now()

    def _render_now(self) -> None:
        r = self.record
        self.border_title = (f"{self.picked} picked: y n m u label them all, esc unpicks" if self.picked
                             else "nothing to review" if r is None else f"#{r.id} {KIND_WORDS[r.kind]}")
        if r is None:
            self.update(Text("No saved moments here. f shows all rows; ! saves the last seconds as a missed wake "
                             "word.", style="dim"))
            return
        self.update(Text("\n").join([self._summary(r), *self._plot(r)]))

    def _summary(self, r: Record) -> Text:
        text = Text.assemble(when(r.time_s, self.tz), "  score ", (score_text(r.score), "bold"), "  model ",
                             r.model_version, "\nlabel ", (label_word(r.label), "bold"))
        if r.labelled_at is not None:
            text.append(f" ({when(r.labelled_at, self.tz)})")
        text.append("  clip ")
        path = self.store.clip_path(r)
        if path is not None:
            try:
                seconds = max(0, path.stat().st_size - 44) / 32_000  # 16 kHz int16 after the WAV header
                text.append(f"{seconds:.1f} s, p plays it")
            except OSError:
                text.append("unreadable", style="red")
        else:
            text.append("lost" if r.clip_missing else "removed by retention", style="dim")
        return text

    def _plot(self, r: Record) -> list[Text]:
        c = self.curve
        if c is None or c.detection_id != r.id:
            return [Text("score over time: computing...", style="dim")]
        if not c.scores:
            return [Text(f"score over time: {c.source}", style="dim")]
        width = max(8, self.content_size.width - _AXIS)
        top, bottom = score_rows(c.scores, width)
        t_peak, s_peak = c.peak  # type: ignore[misc]
        start, end = f"{c.times_s[0]:.2f} s", f"{c.times_s[-1]:.2f} s"
        middle = f"peak {s_peak:.2f} at {t_peak:.2f} s"
        span = min(width, len(top))  # the plot is narrower than the pane for a short clip
        gap = span - len(start) - len(end) - len(middle)
        axis = (f"{start}{' ' * (gap // 2)}{middle}{' ' * (gap - gap // 2)}{end}" if gap >= 2
                else f"{start} to {end}, {middle}")
        return [Text("1.0 ▕") + Text(top, style="cyan"), Text("0.0 ▕") + Text(bottom, style="cyan"),
                Text(" " * _AXIS + axis, style="dim"), Text(c.source, style="dim")]

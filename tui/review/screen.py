"""The review queue: label saved moments with single keys, in bulk, undo; play a clip; see its score over
time; tell the running service "you missed me"."""

from __future__ import annotations

from datetime import tzinfo
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from assistant.analytics import count_many
from assistant.errors import AssistantError
from assistant.store import Label, Store

from ..messages import CaptureEnded, PlaybackEnded, ScoresReady
from ..wording import KIND_WORDS, LABEL_KEYS, LABEL_WORDS
from .detail import DetailPane
from .playback import Player
from .scores import Rescorer, ScoreCurve
from .table import QueueTable

HINT = "↑↓ move  space picks  a picks all unlabelled  esc unpicks  f filter  r reload"
LABELS = Binding.Group("label", compact=True)


# The key that gives each label: the analytics counter tui.key.{key} of a labelling action.
_KEY_OF_LABEL = {label: key for key, label in LABEL_KEYS.items()}


class ReviewScreen(Screen):
    """The queue (newest first), the selected row's detail, a message line and the keys."""

    CSS_PATH = "review.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "label('true_accept')", "right", group=LABELS),
        Binding("n", "label('false_accept')", "false alarm", group=LABELS),
        Binding("m", "label('missed_wake_word')", "missed", group=LABELS),
        Binding("u", "label('unsure')", "unsure", group=LABELS),
        Binding("z", "undo", "undo"),
        Binding("ctrl+z", "undo", "undo", show=False),
        Binding("space", "pick", "pick", key_display="space"),
        Binding("a", "pick_unlabelled", "pick unlabelled", show=False),
        Binding("escape", "unpick", "unpick", show=False),
        Binding("f", "filter", "filter", show=False),
        Binding("p", "play", "play"),
        Binding("exclamation_mark", "missed_me", "missed me", key_display="!"),
        Binding("r", "reload", "reload", show=False),
    ]

    def __init__(self, store: Store, control_path: Path | None, rescorer: Rescorer, tz: tzinfo | None,
                 poll_s: float = 5.0, page_size: int = 100):
        super().__init__()
        self.store, self.control_path, self.rescorer, self.tz = store, control_path, rescorer, tz
        self.poll_s, self.page_size = poll_s, page_size
        self.player = Player()
        self._curves: dict[int, ScoreCurve] = {}
        self._newest_seen: int | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield QueueTable(self.store, self.tz, self.page_size, id="queue")
        yield DetailPane(self.store, self.tz, id="detail")
        yield Static(HINT, id="message", markup=False)
        yield Footer(compact=True)

    @property
    def table(self) -> QueueTable:
        return self.query_one(QueueTable)

    @property
    def detail(self) -> DetailPane:
        return self.query_one(DetailPane)

    def on_mount(self) -> None:
        self.title = "review"
        self.table.reload()
        self._newest_seen = self._newest_id()
        self._update_counts()
        self._show_current()
        if self.poll_s > 0:
            self.set_interval(self.poll_s, self._check_for_new_rows)

    def on_screen_resume(self) -> None:
        self._update_counts()

    def say(self, text: str, error: bool = False) -> None:
        """One line under the detail pane: what a key did, or why it could not."""
        message = self.query_one("#message", Static)
        message.update(text)
        message.set_class(error, "-error")

    # --- keeping the panes in step --------------------------------------------------------------------

    def _update_counts(self) -> None:
        total, unlabelled = self.store.count(), self.store.count(unlabelled_only=True)
        shown = "unlabelled only" if self.table.unlabelled_only else "all rows"
        self.sub_title = f"{unlabelled:,} unlabelled of {total:,} · showing {shown}"

    @on(DataTable.RowHighlighted, "#queue")
    def _row_highlighted(self) -> None:
        self.table.load_near_cursor()
        self._show_current()

    def _show_current(self) -> None:
        i = self.table.current_id()
        record = None if i is None else self.store.get(i)
        self.detail.show(record, self._curves.get(i) if i is not None else None, len(self.table.picked))
        if record is not None and record.id not in self._curves:
            self._compute_curve(record.id)

    @work(thread=True, exclusive=True, group="scores")
    def _compute_curve(self, detection_id: int) -> None:
        record = self.store.get(detection_id)
        if record is not None:
            self.post_message(ScoresReady(self.rescorer.curve(record, self.store.clip_path(record))))

    def on_scores_ready(self, message: ScoresReady) -> None:
        self._curves[message.curve.detection_id] = message.curve
        if self.detail.record is not None and self.detail.record.id == message.curve.detection_id:
            self.detail.show(self.detail.record, message.curve, len(self.table.picked))

    def _newest_id(self) -> int | None:
        newest = self.store.review_queue(unlabelled_only=False, limit=1)
        return newest[0].id if newest else None

    def _count(self, counts: dict[str, int]) -> None:
        """Add to today's usage counters (assistant.analytics); a failure is shown, never fatal to the UI."""
        try:
            count_many(self.store, counts)
        except AssistantError as exc:
            self.say(f"usage counters not updated: {exc}", error=True)

    def _check_for_new_rows(self) -> None:
        newest = self._newest_id()
        if newest is not None and newest != self._newest_seen:
            self._newest_seen = newest
            self._update_counts()
            self.say("new moments were saved: r shows them")

    # --- labelling --------------------------------------------------------------------------------------

    def action_label(self, value: str) -> None:
        table, label = self.table, Label(value)
        current = table.current_id()
        ids = [i for i in table.loaded_ids if i in table.picked] or ([] if current is None else [current])
        if not ids:
            self.say("nothing to label", error=True)
            return
        try:
            self.store.label(ids, label)
        except AssistantError as exc:
            self.say(f"not labelled: {exc}", error=True)
            return
        self._count({f"tui.key.{_KEY_OF_LABEL[label]}": 1, f"label.{label.value}": len(ids)})
        table.show_labels(dict.fromkeys(ids, label))
        if table.picked:
            table.clear_picks()
            self.say(f"labelled {len(ids)} rows {LABEL_WORDS[label]}; z undoes all {len(ids)}")
        else:
            self.say(f"#{ids[0]} {LABEL_WORDS[label]}; z undoes")
            table.move_down()
        self._update_counts()
        self._show_current()

    def action_undo(self) -> None:
        try:
            changes = self.store.undo_last_label()
        except AssistantError as exc:
            self.say(f"not undone: {exc}", error=True)
            return
        self._count({"tui.key.z": 1, "label.undo": 1 if changes else 0})
        if not changes:
            self.say("nothing to undo")
            return
        self.table.show_labels({c.detection_id: c.previous for c in changes})
        self.table.select(changes[-1].detection_id)
        c = changes[0]
        back = "no label" if c.previous is None else LABEL_WORDS[c.previous]
        self.say(f"undid #{c.detection_id} {LABEL_WORDS[c.label]} (back to {back})" if len(changes) == 1
                 else f"undid {len(changes)} labels")
        self._update_counts()
        self._show_current()

    def action_pick(self) -> None:
        i = self.table.current_id()
        if i is not None:
            self.table.toggle_pick(i)
            self.table.move_down()
            self._show_current()

    def action_pick_unlabelled(self) -> None:
        n = self.table.pick_unlabelled()
        self.say(f"picked {n} unlabelled rows (all loaded): y n m u labels them, esc unpicks")
        self._show_current()

    def action_unpick(self) -> None:
        if self.table.picked:
            self.table.clear_picks()
            self.say("unpicked")
            self._show_current()

    def action_filter(self) -> None:
        self.table.unlabelled_only = not self.table.unlabelled_only
        self.action_reload()

    def action_reload(self) -> None:
        keep = self.table.current_id()
        self.table.reload(select_id=keep)
        self._newest_seen = self._newest_id()
        self._update_counts()
        self._show_current()
        self.say("showing unlabelled rows, newest first" if self.table.unlabelled_only
                 else "showing all rows, newest first")

    # --- playing a clip -----------------------------------------------------------------------------------

    def action_play(self) -> None:
        if self.player.playing:
            self.player.stop()
            self.say("stopped")
            return
        record = self.detail.record
        path = None if record is None else self.store.clip_path(record)
        if record is None or path is None:
            self.say("no clip to play: retention removed it" if record else "nothing selected", error=True)
            return
        self._count({"tui.key.p": 1})
        self.say(f"playing #{record.id} ({KIND_WORDS[record.kind]}); p stops")
        self._play(record.id, path)

    @work(thread=True, exclusive=True, group="play")
    def _play(self, detection_id: int, path: Path) -> None:
        try:
            self.player.play(path)
        except AssistantError as exc:
            self.post_message(PlaybackEnded(detection_id, str(exc)))
        else:
            self.post_message(PlaybackEnded(detection_id, None))

    def on_playback_ended(self, message: PlaybackEnded) -> None:
        if message.error:
            self.say(message.error, error=True)
        else:
            self.say(f"played #{message.detection_id}")

    def on_unmount(self) -> None:
        self.player.stop()

    # --- "you missed me" -------------------------------------------------------------------------------------

    def action_missed_me(self) -> None:
        self._count({"tui.key.!": 1})
        seconds = self.store.settings().capture_seconds
        if self.control_path is None:
            self.say("no control socket given (assistant tui --control PATH)", error=True)
            return
        self.say(f"asking the service to save the last {seconds:g} s...")
        self._capture(seconds)

    @work(thread=True, exclusive=True, group="capture")
    def _capture(self, seconds: float) -> None:
        from assistant.control import ControlClient

        try:
            row_id = ControlClient(self.control_path).capture(seconds)
        except (AssistantError, OSError) as exc:
            self.post_message(CaptureEnded(None, seconds, str(exc)))
        else:
            self.post_message(CaptureEnded(row_id, seconds, None))

    def on_capture_ended(self, message: CaptureEnded) -> None:
        if message.error is not None:
            self.say(f"not saved: {message.error}", error=True)  # ControlError names the socket and the fix
            return
        self.table.reload(select_id=message.row_id)
        self._newest_seen = self._newest_id()
        self._update_counts()
        self._show_current()
        self.say(f"saved the last {message.seconds:g} s as #{message.row_id}: m if you said the wake word")

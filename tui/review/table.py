"""The review queue as a table: newest first, loaded a page at a time as the cursor nears the end, so a
store of any size opens as fast as one page reads."""

from __future__ import annotations

from datetime import tzinfo

from rich.text import Text
from textual.widgets import DataTable

from assistant.store import Label, Record, Store

from ..wording import KIND_WORDS, label_word, score_text, when

_LABEL_STYLES = {Label.TRUE_ACCEPT: "green", Label.FALSE_ACCEPT: "red", Label.MISSED_WAKE_WORD: "yellow",
                 Label.UNSURE: "dim"}
PICK = "●"


class QueueTable(DataTable):
    """Rows of the store's review queue, keyed by row id. `unlabelled_only` is the filter; `picked` the
    rows chosen with space for a bulk label."""

    def __init__(self, store: Store, tz: tzinfo | None, page_size: int = 100, *, id: str | None = None):
        super().__init__(cursor_type="row", id=id)
        self.store, self.tz, self.page_size = store, tz, page_size
        self.unlabelled_only = True
        self.picked: set[int] = set()
        self.exhausted = False
        self._last: tuple[float, int] | None = None  # (time_s, id) of the last loaded row: the next page's key
        self._labels: dict[int, Label | None] = {}
        self.add_column(" ", key="pick", width=1)
        self.add_column(Text("#", justify="right"), key="id", width=6)
        self.add_column("time", key="time", width=19)
        self.add_column("kind", key="kind", width=9)
        self.add_column(Text("score", justify="right"), key="score", width=5)
        self.add_column("label", key="label", width=11)

    # --- loading ------------------------------------------------------------------------------------

    def reload(self, select_id: int | None = None) -> None:
        """Start again from the newest row (with the current filter); put the cursor on `select_id` when
        it is in the first page, else on the first row."""
        self.clear()
        self.picked.clear()
        self._labels.clear()
        self._last, self.exhausted = None, False
        self.load_more()
        if select_id is not None and select_id in self._labels:
            self.move_cursor(row=self.get_row_index(str(select_id)), animate=False)

    def load_more(self) -> int:
        """Append the next page; the number of rows added."""
        if self.exhausted:
            return 0
        records = self.store.review_queue(self.unlabelled_only, limit=self.page_size, before=self._last)
        self.exhausted = len(records) < self.page_size
        for r in records:
            self.add_row(*self._cells(r), key=str(r.id))
            self._labels[r.id] = r.label
        if records:
            self._last = (records[-1].time_s, records[-1].id)
        return len(records)

    def load_near_cursor(self) -> None:
        """Load the next page when the cursor is within a quarter page of the end."""
        if not self.exhausted and self.cursor_row >= self.row_count - max(1, self.page_size // 4):
            self.load_more()

    def _cells(self, r: Record) -> tuple[Text | str, ...]:
        return (self._pick_cell(r.id), Text(str(r.id), justify="right"), when(r.time_s, self.tz),
                KIND_WORDS[r.kind], Text(score_text(r.score), justify="right"), self._label_cell(r.label))

    def _pick_cell(self, i: int) -> str:
        return PICK if i in self.picked else " "

    @staticmethod
    def _label_cell(label: Label | None) -> Text:
        return Text(label_word(label), style=_LABEL_STYLES.get(label, "") if label else "dim")

    # --- what the screen asks -----------------------------------------------------------------------

    @property
    def loaded_ids(self) -> list[int]:
        """Row ids in table order."""
        return list(self._labels)

    def current_id(self) -> int | None:
        """The id of the row under the cursor, None for an empty table."""
        if self.row_count == 0:
            return None
        return int(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)  # type: ignore[arg-type]

    def label_of(self, i: int) -> Label | None:
        return self._labels.get(i)

    def show_labels(self, labels: dict[int, Label | None]) -> None:
        """Show new labels on the rows that are loaded (a labelled row stays until the next reload, so
        what was just done can be seen and undone)."""
        for i, label in labels.items():
            if i in self._labels:
                self._labels[i] = label
                self.update_cell(str(i), "label", self._label_cell(label))

    def toggle_pick(self, i: int) -> None:
        self._set_picked(self.picked ^ {i})

    def pick_unlabelled(self) -> int:
        """Pick every loaded row without a label; how many."""
        self._set_picked({i for i, label in self._labels.items() if label is None})
        return len(self.picked)

    def clear_picks(self) -> None:
        self._set_picked(set())

    def _set_picked(self, picked: set[int]) -> None:
        changed = self.picked ^ picked
        self.picked = picked
        for i in changed:
            if i in self._labels:
                self.update_cell(str(i), "pick", self._pick_cell(i))

    def move_down(self) -> None:
        """Cursor to the next row (the usual step after labelling one)."""
        if self.cursor_row < self.row_count - 1:
            self.move_cursor(row=self.cursor_row + 1)

    def select(self, i: int) -> None:
        """Cursor to row `i` when it is loaded."""
        if i in self._labels:
            self.move_cursor(row=self.get_row_index(str(i)))

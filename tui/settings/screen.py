"""Settings: the owner's privacy and retention choices, edited through the store, checked field by field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import HorizontalGroup, VerticalScroll
from textual.screen import Screen
from textual.widgets import Checkbox, Footer, Header, Input, Label, Static

from assistant.errors import StoreError
from assistant.store import Settings, Store

MIB = 2**20


@dataclass(frozen=True)
class Field:
    """One setting as the form shows it; `scale` converts the shown number to the stored one."""

    name: str  # the Settings field
    caption: str
    section: str
    scale: int = 1  # stored = shown * scale, rounded to a whole number when scale > 1

    @property
    def is_switch(self) -> bool:
        return self.name.endswith("_opt_in")


FIELDS = (
    Field("learning_opt_in", "take part in learning rounds", "privacy"),
    Field("epsilon_budget", "privacy budget, epsilon for all rounds", "privacy"),
    Field("analytics_opt_in", "send daily usage counters", "privacy"),
    Field("clip_retention_days", "keep clips for (days)", "retention"),
    Field("storage_cap_bytes", "storage cap for clips (MiB)", "retention", MIB),
    Field("capture_seconds", '"missed me" saves the last (s)', "retention"),
)


def shown_value(settings: Settings, f: Field) -> str:
    """The setting as the input shows it."""
    value = getattr(settings, f.name)
    return f"{value / f.scale:g}"


class SettingsScreen(Screen):
    """A form over Settings: enter or ctrl+s saves; a bad value is named under its field and nothing is
    saved until every field is good."""

    CSS_PATH = "settings.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+s", "save", "save", priority=True),
                Binding("escape", "app.switch_mode('review')", "back")]

    def __init__(self, store: Store):
        super().__init__()
        self.store = store

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            section = None
            for f in FIELDS:
                if f.section != section:
                    section = f.section
                    yield Static(section, classes="section")
                with HorizontalGroup(classes="field"):
                    yield Label(f.caption, classes="caption")
                    if f.is_switch:
                        yield Checkbox("off", id=f.name, compact=True)
                    else:
                        yield Input(id=f.name, type="number", compact=True)
                yield Static("", id=f"{f.name}-error", classes="error", markup=False)
            yield Static("", id="saved", markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = "settings"

    def on_screen_resume(self) -> None:
        self._fill(self.store.settings())
        self.query_one(f"#{FIELDS[0].name}").focus()

    def _fill(self, settings: Settings) -> None:
        for f in FIELDS:
            if f.is_switch:
                self.query_one(f"#{f.name}", Checkbox).value = getattr(settings, f.name)
            else:
                self.query_one(f"#{f.name}", Input).value = shown_value(settings, f)
            self._error(f, None)
        self.query_one("#saved", Static).update("tab moves, space toggles, enter or ctrl+s saves, esc leaves")

    @on(Checkbox.Changed)
    def _say_on_or_off(self, event: Checkbox.Changed) -> None:
        event.checkbox.label = "on" if event.value else "off"

    def _error(self, f: Field, text: str | None) -> None:
        error = self.query_one(f"#{f.name}-error", Static)
        error.update(text or "")
        error.display = text is not None

    def _parse(self, f: Field) -> object:
        if f.is_switch:
            return self.query_one(f"#{f.name}", Checkbox).value
        raw = self.query_one(f"#{f.name}", Input).value.strip()
        try:
            number = float(raw)
        except ValueError:
            raise StoreError(f"{raw!r} is not a number") from None
        if f.scale > 1 or f.name.endswith(("_bytes", "_quota")):
            return round(number * f.scale)
        return int(number) if number.is_integer() else number

    @on(Input.Submitted)
    def action_save(self) -> None:
        current = self.store.settings()
        changes, bad = {}, 0
        for f in FIELDS:
            try:
                value = self._parse(f)
                current.replace(**{f.name: value})  # checks this field alone against the others as stored
            except StoreError as exc:
                self._error(f, str(exc))
                bad += 1
                continue
            self._error(f, None)
            if value != getattr(current, f.name):
                changes[f.name] = value
        saved = self.query_one("#saved", Static)
        if bad:
            saved.update(f"not saved: {bad} field{'s' * (bad > 1)} to fix")
            return
        if changes:
            self.store.update_settings(**changes)
        saved.update(f"saved {', '.join(changes)}" if changes else "nothing changed")

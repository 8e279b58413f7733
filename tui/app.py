"""`assistant tui`: the owner's window on the device. Three views (review, status, settings), each its own
Screen in its own mode; everything is read and written through the store and the control channel, both
handed in, so a test builds the app around a temporary store."""

from __future__ import annotations

from datetime import tzinfo
from pathlib import Path
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from assistant.store import Store

from .review.scores import Rescorer
from .review.screen import ReviewScreen
from .settings.screen import SettingsScreen
from .status.screen import StatusScreen


class AssistantApp(App[None]):
    """The labelling and status UI over `store`.

    control_path: the running service's control socket (None: no service to ask).
    model_dir: the model that rescores clips for the score-over-time plot (None: stored scores only).
    tz: the zone times are shown in (None: the machine's).
    poll_s: how often to look for rows the service saved meanwhile (0: never)."""

    TITLE = "assistant"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "switch_mode('review')", "review"),
        Binding("2", "switch_mode('status')", "status"),
        Binding("3", "switch_mode('settings')", "settings"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, store: Store, control_path: Path | None = None, model_dir: Path | None = None,
                 tz: tzinfo | None = None, poll_s: float = 5.0, page_size: int = 100):
        super().__init__()
        self.store = store
        rescorer = Rescorer(model_dir)
        self.add_mode("review", lambda: ReviewScreen(store, control_path, rescorer, tz, poll_s, page_size))
        self.add_mode("status", lambda: StatusScreen(store, control_path, tz))
        self.add_mode("settings", lambda: SettingsScreen(store))

    def on_mount(self) -> None:
        self.switch_mode("review")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide the key of the view already shown."""
        return not (action == "switch_mode" and parameters and parameters[0] == self.current_mode)

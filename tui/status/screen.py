"""Status: the model and its local accuracy, learning rounds and the privacy budget, the clerk."""

from __future__ import annotations

from datetime import tzinfo
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from assistant.errors import AssistantError
from assistant.store import Store

from ..messages import ServiceStatus
from ..wording import duration, when

BAR = 20  # cells in the privacy budget bar


def budget_bar(spent: float, budget: float) -> Text:
    """[████░░░░] of `spent` over `budget`, red once it is all spent."""
    full = BAR if budget <= 0 else min(BAR, round(BAR * spent / budget))
    return Text.assemble(("█" * full, "red" if spent >= budget else "green"), ("░" * (BAR - full), "dim"))


class StatusScreen(Screen):
    """Three panels read from the store (and the running service, when there is one) each time the screen
    is shown."""

    CSS_PATH = "status.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.switch_mode('review')", "back", show=False),
                Binding("r", "refresh", "refresh")]

    def __init__(self, store: Store, control_path: Path | None, tz: tzinfo | None):
        super().__init__()
        self.store, self.control_path, self.tz = store, control_path, tz
        self.service: dict | None = None
        self.service_error: str | None = "asking..."

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static(id="model", classes="panel")
            yield Static(id="learning", classes="panel")
            yield Static(id="clerk", classes="panel")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = "status"
        self.query_one("#model").border_title = "model and local accuracy"
        self.query_one("#learning").border_title = "learning and privacy"
        self.query_one("#clerk").border_title = "clerk"

    def on_screen_resume(self) -> None:
        self.action_refresh()

    def action_refresh(self) -> None:
        self._render_panels()
        self._ask_service()

    @work(thread=True, exclusive=True, group="status")
    def _ask_service(self) -> None:
        if self.control_path is None:
            self.post_message(ServiceStatus(None, "no control socket given"))
            return
        from assistant.control import ControlClient

        try:
            self.post_message(ServiceStatus(ControlClient(self.control_path).status(), None))
        except (AssistantError, OSError) as exc:
            self.post_message(ServiceStatus(None, str(exc)))

    def on_service_status(self, message: ServiceStatus) -> None:
        self.service, self.service_error = message.status, message.error
        self._render_panels()

    @property
    def rows_shown(self) -> int:
        """Latest rounds and jobs listed: 3 each in 24 lines, more when the terminal is taller."""
        return max(3, (self.size.height - 18) // 2)

    def on_resize(self) -> None:
        self._render_panels()

    def _render_panels(self) -> None:
        self.query_one("#model", Static).update(self._model_text())
        self.query_one("#learning", Static).update(self._learning_text())
        self.query_one("#clerk", Static).update(self._clerk_text())

    def _model_text(self) -> Text:
        s, svc = self.store.stats(), self.service
        text = Text()
        if svc is not None:
            text.append_text(Text.assemble(
                "model ", (str(svc.get("model_version", "?")), "bold"), f"  wake word {svc.get('wakeword', '?')}",
                f"  threshold {float(svc.get('threshold', 0)):.2f}\n",
                f"service up {duration(float(svc.get('uptime_s', 0)))}, listening to {svc.get('source', '?')}\n",
                f"since start {int(svc.get('frames', 0)):,} frames  {int(svc.get('detections', 0)):,} detections  "
                f"{int(svc.get('near_misses', 0)):,} near misses saved\n"))
        else:
            newest = self.store.review_queue(unlabelled_only=False, limit=1)
            version = newest[0].model_version if newest else "none yet"
            text.append_text(Text.assemble("model ", (version, "bold"), " (of the newest saved row)\n"))
            text.append(f"service not running ({self.service_error})\n", style="dim")
        precision = "-" if s.precision is None else f"{s.precision:.1%}"
        text.append_text(Text.assemble(
            f"right {s.true_accept:,}  false alarm {s.false_accept:,}  missed {s.missed_wake_word:,}  "
            f"unsure {s.unsure:,}  unlabelled {s.unlabelled:,}\n",
            "precision ", (precision, "bold"), " (right / (right + false alarm))  ",
            "misses you reported ", (f"{s.misses:,}", "bold")))
        return text

    def _learning_text(self) -> Text:
        settings = self.store.settings()
        eps, delta = self.store.privacy_spent()
        rounds = self.store.learning_rounds(limit=self.rows_shown)
        text = Text.assemble(
            "learning ", ("on" if settings.learning_opt_in else "off", "bold"),
            "" if settings.learning_opt_in else " (3 settings to opt in)",
            "  analytics ", ("on" if settings.analytics_opt_in else "off", "bold"), "\n",
            "privacy spent ", budget_bar(eps, settings.epsilon_budget),
            f" ε {eps:.2f} of {settings.epsilon_budget:g}, δ {delta:.1e}")
        if not rounds:
            text.append("\nno learning rounds yet", style="dim")
        for r in rounds:
            text.append(f"\n{when(r.time_s, self.tz)}  {r.round_id}  {r.status}  {r.label_count} labels  "
                        f"ε {r.epsilon_spent:.2f}")
        return text

    def _clerk_text(self) -> Text:
        c = self.store.clerk_status()
        text = Text.assemble("clerk ", ("opted in" if c.opted_in else "not opted in", "bold"),
                             f"  stake {c.stake:,} tokens  {c.jobs_done:,} jobs  earned ",
                             (f"{c.tokens_earned:+,} tokens", "bold"))
        jobs = self.store.clerk_jobs(limit=self.rows_shown)
        for j in jobs:
            text.append(f"\n{when(j.time_s, self.tz)}  {j.job_id}  {j.tokens:+,} tokens",
                        style="red" if j.tokens < 0 else "")
        return text

"""`assistant coordinator`: the developer's learning coordinator (DESIGN §8). sda's Coordinator (registry,
committees, reveal, ledger) with rounds.LearningRounds on top, for one model directory: a learning round
every `every_s` seconds (never two at once: the next starts once the last was handled and `every_s` has
passed since it started), each ending, when the validation set accepts the step, in a signed release
published retained, which opted-in devices verify, check on their own labels and install.

The FedAdam state and the sealed releases live in STATE/learning, so a restarted coordinator goes on from
the last release, with round numbers after the last round it ran.

With `analytics` set it also requests each finished local day's analytics aggregation once
(analytics.schedule.DailyAnalytics), checked about every ANALYTICS_TICK_S while it waits for rounds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sda.errors import SdaError
from sda.mqtt.transport import BrokerConfig
from sda.services.coordinator import Coordinator, CoordinatorConfig
from sda.services.storage import open_store

from ..analytics.coordinate import AnalyticsConfig
from ..analytics.schedule import DailyAnalytics, RevealedDay
from ..errors import AssistantError
from ..kws.head import Head
from ..kws.model import load_model
from .client import DEFAULT_CLIP_NORM
from .device import MODEL_ID
from .errors import LearningError
from .fedadam import FedAdamConfig
from .release import ReleaseSpec
from .rounds import LearningRoundConfig, LearningRounds, RoundOutcome
from .validation import ValidationSet

log = logging.getLogger(__name__)

ANALYTICS_TICK_S = 1.0  # how often the loop looks at the analytics schedule (a store query or two)
#: Before the first analytics request: registrations retained on the broker are read meanwhile, so the day's
#: committee is not drawn from nobody (as the first learning round waits a period).
ANALYTICS_SETTLE_S = 5.0


@dataclass(frozen=True)
class CoordinatorSetup:
    """Everything `assistant coordinator` runs with (the CLI's flags), validated once."""

    state_dir: Path
    broker: BrokerConfig
    model_dir: Path
    validation: Path
    model_id: str
    every_s: float = 600.0
    rounds: int | None = None  # stop after this many rounds (None: until stopped)
    clip_norm: float = DEFAULT_CLIP_NORM
    learning_rate: float = FedAdamConfig().learning_rate
    round_config: LearningRoundConfig = field(default_factory=LearningRoundConfig)
    grant_stake: int = 0
    database: str | None = None
    analytics: AnalyticsConfig | None = None  # also request each finished day's analytics (None: not)
    analytics_grace_s: float = 600.0  # after local midnight, before the day ended is requested

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                raise AssistantError(f"coordinator setting {key}: got {getattr(self, key)!r}; need {allowed}")

        need(bool(MODEL_ID.fullmatch(self.model_id)), "model_id", "1-64 letters, digits, _ or -")
        need(self.every_s > 0, "every_s", "seconds > 0")
        need(self.rounds is None or self.rounds >= 1, "rounds", "a whole number >= 1")
        need(self.clip_norm > 0, "clip_norm", "a number > 0")
        need(self.learning_rate > 0, "learning_rate", "a number > 0")
        need(self.grant_stake >= 0, "grant_stake", "tokens >= 0")
        need(0 <= self.analytics_grace_s < 86400, "analytics_grace_s", "seconds in [0, 86400)")


def describe(outcome: RoundOutcome) -> str:
    """One line for the log and stdout: what became of a round."""
    if outcome.error is not None:
        return f"round {outcome.round_id}: no sum ({outcome.error})"
    reason = outcome.decision.reason if outcome.decision is not None else ""
    if outcome.release is not None:
        r = outcome.release
        return (f"round {outcome.round_id}: {outcome.participants} devices; release {r.version} published, central"
                f" (epsilon, delta) = ({r.epsilon:.3g}, {r.delta:g}) over {len(r.rounds)} round(s); {reason}")
    return f"round {outcome.round_id}: {outcome.participants} devices; no release: {reason}"


def learning_rounds(setup: CoordinatorSetup, coordinator: Coordinator) -> LearningRounds:
    """LearningRounds for the setup's model on `coordinator`; AssistantError when the model or the validation set
    is unusable (checked before anything connects)."""
    files = load_model(setup.model_dir)
    sha = files.card["files"]["backbone.onnx"]["sha256"]
    vset = ValidationSet.load(setup.validation)
    head = Head.load(files.head)
    if vset.backbone_sha256 != sha:
        raise LearningError(f"validation set {setup.validation} was embedded by backbone {vset.backbone_sha256[:12]},"
                            f" the model in {setup.model_dir} has {sha[:12]}")
    if (vset.window, vset.embed) != (head.window, head.embed):
        raise LearningError(f"validation set {setup.validation} has ({vset.window}, {vset.embed}) windows, the head"
                            f" takes ({head.window}, {head.embed})")
    spec = ReleaseSpec(setup.model_id, coordinator.cid, sha, setup.clip_norm,
                       threshold=files.threshold if files.threshold is not None else 0.5)
    return LearningRounds(coordinator, head, vset, spec, setup.round_config,
                          FedAdamConfig(learning_rate=setup.learning_rate), state_dir=setup.state_dir / "learning")


def run(setup: CoordinatorSetup, stop: threading.Event, on_round: Callable[[RoundOutcome], None] | None = None,
        on_day: Callable[[RevealedDay], None] | None = None) -> int:
    """Run the coordinator and its rounds (and, with setup.analytics, the daily analytics) until `stop` is set or
    `setup.rounds` rounds were handled; the number of rounds handled."""
    coordinator = Coordinator(CoordinatorConfig(setup.state_dir, setup.broker, grant_stake=setup.grant_stake),
                              store=open_store(setup.database, setup.state_dir))
    rounds = learning_rounds(setup, coordinator)
    daily = DailyAnalytics(coordinator, setup.analytics, setup.analytics_grace_s) if setup.analytics else None
    coordinator.start()
    started = time.monotonic()

    def tick() -> None:
        if daily is None or time.monotonic() - started < ANALYTICS_SETTLE_S:
            return
        try:
            for day in daily.tick():
                log.info("%s", day.describe())
                if on_day is not None:
                    on_day(day)
        except (AssistantError, SdaError) as exc:  # a bad day's request must not stop the learning rounds
            log.error("analytics: %s", exc)

    def wait(until: float) -> bool:
        """Wait until monotonic time `until`, ticking the analytics; True when stopped."""
        while (left := until - time.monotonic()) > 0:
            if stop.wait(min(left, ANALYTICS_TICK_S)):
                return True
            tick()
        return stop.is_set()

    if daily is not None:
        daily.start()
    done = 0
    try:
        # The first round waits one period too: devices and clerks registered before the coordinator started
        # are read from their retained registrations meanwhile, so the first committee is not drawn from nobody.
        next_at = time.monotonic() + setup.every_s
        while setup.rounds is None or done < setup.rounds:
            if wait(next_at):
                break
            round_id = rounds.start_round()
            next_at = time.monotonic() + setup.every_s
            outcome = None
            while outcome is None and not stop.is_set():
                tick()
                try:
                    outcome = rounds.wait(round_id, timeout_s=0.5)
                except LearningError:  # not finished yet: look at `stop` again
                    continue
            if outcome is None:
                break
            done += 1
            log.info("%s", describe(outcome))
            if on_round is not None:
                on_round(outcome)
    finally:
        coordinator.stop()
    return done

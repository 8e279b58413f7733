"""The device's glue between `sda`'s participant client and a learning round (DESIGN §8).

`sda.services.participant.ParticipantClient` asks the device `provide(announce) -> vector | None` for each
announce it accepts, and calls `recorded(announce)` once the participation is in its ParticipationLog,
before it is published. `LearningClient` supplies both:

    learning = LearningClient(store, model_id, head=lambda: current_head, clip_norm=1.0)
    client = learning.participant_client(config, identity)   # or pass learning.provide / learning.recorded
    client.start()

For an announce of a learning round of this model (`is_learning_round`: the id names the model) it
builds the RoundSpec (participate.RoundSpec.from_announce, the clip norm from the current release), prepares
the device's input from the store's labels (participate.prepare), hands sda `participant_input(announce)`,
and commits the round to the store's privacy ledger in `recorded`. A device that is not eligible (not opted
in, too few new labels, over budget, a round it cannot do safely) sends nothing; the reason is logged and
kept in `refused` (an over-budget refusal is also recorded in the store, participate.record_refusal). Any
other announce goes to `fallback` (None: not taken part in).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sda import crypto
from sda.protocol.messages import Announce
from sda.services.participant import ParticipantClient, ParticipantConfig, ParticipationLog

from ..analytics.counters import count_quietly
from ..errors import AssistantError
from ..kws.head import Head
from ..kws.model import load_model
from ..store import RoundStatus, Store
from .errors import LearningError
from .participate import NotEligible, PreparedParticipation, RoundSpec, prepare, record_refusal
from .policy import LearningPolicy, Refusal
from .privacy import DEFAULT_DELTA, Accounting, record_round

log = logging.getLogger(__name__)

#: The analytics counter of each reason a device stays out of a round (others: learning.refused_params).
_REFUSAL_EVENTS = {Refusal.OVER_BUDGET: "learning.refused_budget", Refusal.TOO_FEW_LABELS: "learning.refused_labels",
                   Refusal.NOT_OPTED_IN: "learning.refused_opt_out"}

ROUND_PREFIX = "learn"


def learning_round_id(model_id: str, number: int) -> str:
    """The aggregation id of learning round `number` of `model_id`."""
    return f"{ROUND_PREFIX}.{model_id}.{number}"


def is_learning_round(aggregation_id: str, model_id: str) -> bool:
    """True for the id of a learning round of `model_id` (learning_round_id)."""
    head, _, number = aggregation_id.rpartition(".")
    return head == f"{ROUND_PREFIX}.{model_id}" and number.isdigit()


#: The L2 clip used before any release has stated one (the shipped model's card has no release entry).
DEFAULT_CLIP_NORM = 1.0


def model_head(model_dir: Path) -> Head:
    """The head of the model installed at `model_dir` (e.g. ModelVersions.current), checked against its card."""
    return Head.load(load_model(model_dir).head)


def model_clip_norm(model_dir: Path, default: float = DEFAULT_CLIP_NORM) -> float:
    """The clip norm the installed release states for its rounds (`default` before any release)."""
    return float(load_model(model_dir).card.get("release", {}).get("clip_norm", default))


class LearningClient:
    """Answers learning announces of `model_id` from `store`'s labels with the head `head()` returns (the head
    devices run now: the round's gradient is taken at it). Thread-safe; `provide` and `recorded` run on the
    participant client's connection thread."""

    def __init__(self, store: Store, model_id: str, head: Callable[[], Head],
                 clip_norm: float | Callable[[], float] = DEFAULT_CLIP_NORM, rng: np.random.Generator | None = None,
                 policy: LearningPolicy | None = None, delta: float = DEFAULT_DELTA,
                 accounting: Accounting = Accounting.SKELLAM,
                 fallback: Callable[[Announce], np.ndarray | None] | None = None):
        self.store, self.model_id, self.head = store, model_id, head
        self._clip_norm = clip_norm
        self.rng = rng if rng is not None else np.random.default_rng()
        self.policy, self.delta, self.accounting, self.fallback = policy, delta, accounting, fallback
        self._lock = threading.Lock()
        self._pending: dict[str, PreparedParticipation] = {}
        self.committed: dict[str, PreparedParticipation] = {}  # rounds spent, by id
        self.refused: dict[str, str] = {}  # rounds this device stayed out of, and why

    def clip_norm(self) -> float:
        return float(self._clip_norm() if callable(self._clip_norm) else self._clip_norm)

    def provide(self, a: Announce) -> np.ndarray | None:
        """ParticipantClient's `provide`: this device's input to a learning round, or None (nothing sent)."""
        if not is_learning_round(a.aggregation_id, self.model_id):
            return self.fallback(a) if self.fallback is not None else None
        agg = a.aggregation_id
        with self._lock:
            if agg in self.committed:  # sda's log refuses a second participation anyway
                return None
            try:
                spec = RoundSpec.from_announce(a, self.clip_norm(), self.accounting)
                prepared = prepare(self.store, self.head(), spec, self.rng, self.policy, self.delta)
                x = prepared.participant_input(a)
            except NotEligible as exc:
                self._refuse(agg, exc.decision.reason)
                count_quietly(self.store, _REFUSAL_EVENTS.get(exc.decision.refusal, "learning.refused_params"))
                try:
                    record_refusal(self.store, spec, exc.decision)
                except AssistantError as err:  # e.g. the round is already in the ledger
                    log.warning("learning round %s: refusal not recorded: %s", agg, err)
                return None
            except (LearningError, AssistantError) as exc:
                self._refuse(agg, str(exc))
                count_quietly(self.store, "learning.refused_params")
                return None
            self._pending[agg] = prepared
            log.info("learning round %s: sending a gradient over %d labels (norm %.4g before clipping to %g); %s",
                     agg, prepared.label_count, prepared.gradient_norm, spec.clip_norm, prepared.decision.reason)
            return x

    def recorded(self, a: Announce) -> None:
        """ParticipantClient's `recorded`: sda has recorded the participation, so spend the round's privacy now
        (before the publish: a crash after it re-sends the same bytes, never a second gradient).

        sda calls it again before re-sending a participation recorded before a restart: when the crash (or a
        failed commit) came between sda's record and this ledger row, the round is spent now, before the bytes go
        out. Its cost depends only on the announce and the clip norm; which rows it used is lost with the crash,
        so none is marked learned. Raises (StoreError) when the row cannot be written: sda then sends nothing."""
        with self._lock:
            prepared = self._pending.pop(a.aggregation_id, None)
            if prepared is None:
                self._spend_after_a_crash(a)
                return
            prepared.commit(self.store)
            self.committed[a.aggregation_id] = prepared
            count_quietly(self.store, "learning.taken")
            log.info("learning round %s: recorded in the privacy ledger (%d labels)", a.aggregation_id,
                     prepared.label_count)

    def _spend_after_a_crash(self, a: Announce) -> None:
        agg = a.aggregation_id
        if (agg in self.committed or not is_learning_round(agg, self.model_id)
                or self.store.learning_round(agg) is not None):
            return
        spec = RoundSpec.from_announce(a, self.clip_norm(), self.accounting)
        record_round(self.store, agg, spec.cost(), 0, RoundStatus.COMPLETED, delta=self.delta)
        count_quietly(self.store, "learning.taken")
        log.warning("learning round %s: recorded in the privacy ledger on re-sending: the participation was"
                    " recorded, but not yet its cost, when the device stopped", agg)

    def participant_client(self, config: ParticipantConfig, identity: crypto.Identity,
                           log_: ParticipationLog | None = None) -> ParticipantClient:
        """An sda participant client wired to this device's learning."""
        return ParticipantClient(config, identity, self.provide, log_, recorded=self.recorded)

    def _refuse(self, agg: str, reason: str) -> None:
        self.refused[agg] = reason
        log.info("learning round %s: not taking part: %s", agg, reason)

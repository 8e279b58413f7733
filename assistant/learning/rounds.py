"""The coordinator's side of a learning round (DESIGN §8), over `sda`'s coordinator service:

    rounds = LearningRounds(coordinator, head, vset, ReleaseSpec(model, coordinator.cid, backbone_sha, C))
    round_id = rounds.start_round()      # an sda aggregation of d = head.size with the round's noise
    outcome = rounds.wait(round_id)      # after the reveal: FedAdam step, validation gate, signed release

Announce: dimension = the head's size, a power-of-two scale, Skellam noise of total standard deviation
`noise_multiplier * C * scale` (quantised units) added by whom `LearningRoundConfig.noise_mode` says:

- participants: each device adds sigma^2 / N_min;
- clerks: each of the n committee clerks adds sigma^2 / (n - t) as an sda noise participant
  (sda.protocol.noise_participant); n and t are pinned in the config, since the headroom of n shares
  must be stated in the announce before the committee is drawn;

a clip range that holds one device's clipped gradient plus its noise share (participate.RoundSpec.clip_range:
sda's participant must never clip it), and the noise headroom the sum needs. The clip norm C is not an
announce field: devices take it from the release they run (ReleaseSpec.clip_norm).

On the reveal (sda's Coordinator.on_finished, on its worker thread): the revealed integer sum over the
participants, divided by the number of *devices* (sda reports noise-adding clerks apart) ->
fedadam.mean_gradient -> fedadam.apply_round (the round's privacy cost, as devices account it) ->
release.propose_release (the validation gate) -> seal_release with the coordinator's identity -> save the
FedAdam state and the sealed bytes (when `state_dir` is given) -> publish_release, retained.
A refused candidate is discarded (no release; devices stay on the released head).

After a coordinator restart the last sealed release is published again, retained, from `state_dir`
(republish_release, run when the coordinator connects): a broker that lost its retained messages gets it
back, and devices that join later still find the head they should run.

Round ids are `learn.{model_id}.{n}` (client.is_learning_round): how devices tell a learning announce from
other aggregations; its dimension must also be their head's size.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sda.errors import SdaError
from sda.field import P_DEFAULT
from sda.protocol.messages import Announce, Envelope
from sda.services.coordinator import AggregationSpec, Coordinator
from sda.simulation import default_thresholds

from ..kws.head import Head
from .atomic import write_atomic
from .client import is_learning_round, learning_round_id
from .errors import LearningError
from .fedadam import FedAdamConfig, FedAdamState, apply_round, load_state, mean_gradient, save_state
from .noise import NoiseMode
from .participate import RoundSpec
from .privacy import Accounting
from .release import Release, ReleaseSpec, propose_release, publish_release, seal_release, verify_release
from .validation import ReleaseDecision, ReleasePolicy, ValidationSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearningRoundConfig:
    """The parameters every learning round announces (see the module doc).

    noise_mode: who adds the noise. With NoiseMode.CLERKS, committee_size is required (the coordinator then
    draws exactly that many clerks, or refuses the round) and k, t default to sda's default_thresholds.
    """

    scale: float = 2.0**12
    noise_multiplier: float = 1.0  # total noise std / C
    min_participants: int = 10
    max_participants: int = 1000
    collect_s: float = 60.0
    results_s: float = 60.0
    close_when_complete: bool = True
    p: int = P_DEFAULT
    accounting: Accounting = Accounting.SKELLAM
    noise_mode: NoiseMode = NoiseMode.PARTICIPANTS
    committee_size: int | None = None
    k: int | None = None
    t: int | None = None
    clerk_reward: int = 1  # tokens a clerk earns per participant summed, when its result was used (DESIGN §5)

    def __post_init__(self) -> None:
        try:
            mode = NoiseMode(self.noise_mode)
        except ValueError:
            raise LearningError(f"noise_mode must be one of {[m.value for m in NoiseMode]}, got"
                                f" {self.noise_mode!r}") from None
        object.__setattr__(self, "noise_mode", mode)
        if mode is NoiseMode.NONE:  # fedadam.apply_round refuses a round without noise: say so up front
            raise LearningError("learning rounds need DP noise: noise_mode 'participants' or 'clerks', not 'none'")
        if (self.k is None) != (self.t is None):
            raise LearningError(f"give both k and t or neither, got k={self.k}, t={self.t}")
        if mode is NoiseMode.CLERKS and self.committee_size is None:
            raise LearningError("noise_mode 'clerks' needs committee_size: the noise headroom of n clerk shares is"
                                " announced before the committee is drawn")

    def thresholds(self) -> tuple[int | None, int | None, int | None]:
        """(n, k, t) the rounds announce; None where the coordinator chooses (participant noise)."""
        if self.committee_size is None:
            return None, self.k, self.t
        if self.k is not None and self.t is not None:
            return self.committee_size, self.k, self.t
        try:
            k, t = default_thresholds(self.committee_size)
        except SdaError as exc:
            raise LearningError(f"committee_size={self.committee_size}: {exc}") from None
        return self.committee_size, k, t


def round_spec(config: LearningRoundConfig, round_id: str, dimension: int, clip_norm: float) -> RoundSpec:
    """The round as devices will see it (its committee size matters only with clerk noise)."""
    n, _, t = config.thresholds()
    clerks = config.noise_mode is NoiseMode.CLERKS
    spec = RoundSpec(round_id, dimension, clip_norm, config.scale, config.p, config.min_participants,
                     config.max_participants, "skellam", config.noise_mode,
                     config.noise_multiplier * clip_norm * config.scale, n=n if clerks and n else 1,
                     t=t if clerks and t else 0, accounting=config.accounting)
    spec.check_capacity()
    return spec


def aggregation_spec(config: LearningRoundConfig, round_id: str, head: Head, clip_norm: float) -> AggregationSpec:
    """The sda aggregation that runs learning round `round_id` for `head`."""
    s = round_spec(config, round_id, head.size, clip_norm)
    n, k, t = config.thresholds()
    return AggregationSpec(round_id, head.size, scale=s.scale, clip_lo=-s.clip_range, clip_hi=s.clip_range,
                           k=k, t=t, committee_size=n,
                           collect_s=config.collect_s, results_s=config.results_s,
                           min_participants=config.min_participants, max_participants=config.max_participants,
                           close_when_complete=config.close_when_complete, p=config.p, noise_mechanism="skellam",
                           noise_added_by=config.noise_mode.value, noise_sigma=s.sigma,
                           noise_headroom=s.noise_headroom, reward_per_participant=config.clerk_reward)


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields
class RoundOutcome:
    """What became of a learning round: `error` set when it failed before or at the reveal."""

    round_id: str
    participants: int = 0  # devices only: noise-adding clerks are not counted
    field_sum: np.ndarray | None = None  # (d,) int64, the revealed sum, signed quantised units
    gradient: np.ndarray | None = None  # (d,) float64, the pseudo-gradient FedAdam stepped with
    decision: ReleaseDecision | None = None
    release: Release | None = None
    sealed: bytes | None = None
    error: str | None = None


@dataclass
class _Waiters:
    done: dict[str, RoundOutcome] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)


class LearningRounds:
    """Runs learning rounds of one model on an sda Coordinator (started or not). `like` is the released head
    (its parameters start the FedAdam state when there is none in `state_dir`)."""

    def __init__(self, coordinator: Coordinator, like: Head, vset: ValidationSet, release: ReleaseSpec,
                 config: LearningRoundConfig | None = None, fedadam: FedAdamConfig | None = None,
                 state_dir: Path | None = None, release_policy: ReleasePolicy | None = None):
        if release.coordinator_id != coordinator.cid:
            raise LearningError(f"releases named for {release.coordinator_id!r}, signed by {coordinator.cid!r}")
        self.coordinator, self.like, self.vset, self.release_spec = coordinator, like, vset, release
        self.config = config or LearningRoundConfig()
        self.release_policy = release_policy
        self.state_dir = Path(state_dir) if state_dir is not None else None
        path = self._state_path
        if path is not None and path.exists():
            self.state = load_state(path)
        else:
            self.state = FedAdamState.start(like.flat(), fedadam)
        self._w = _Waiters()
        self._lock = threading.Lock()
        self._chained = coordinator.on_finished
        coordinator.on_finished = self._on_finished
        self._chained_start = coordinator.on_started
        coordinator.on_started = self._on_started
        if coordinator.transport.connected.is_set():  # built around a running coordinator
            self._on_started(chain=False)

    @property
    def _state_path(self) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"fedadam-{self.release_spec.model_id}.npz"

    def start_round(self, number: int | None = None) -> str:
        """Request learning round `number` (default: the next) of the model, announced on the coordinator's next
        tick; its id."""
        with self._lock:
            if number is None:  # after the last round of this model requested here, failed ones included
                model = self.release_spec.model_id
                done = [int(r.aggregation_id.rpartition(".")[2]) for r in self.coordinator.store.aggregations()
                        if is_learning_round(r.aggregation_id, model)]
                number = max(done, default=0) + 1
            round_id = learning_round_id(self.release_spec.model_id, number)
            head = self.like.with_flat(self.state.released)
            spec = aggregation_spec(self.config, round_id, head, self.release_spec.clip_norm)
            if not self.coordinator.request(spec):
                raise LearningError(f"aggregation {round_id!r} exists already")
        log.info("requested learning round %s: d=%d, sigma %.4g quantised units", round_id, spec.dimension,
                 spec.noise_sigma)
        return round_id

    def _on_started(self, chain: bool = True) -> None:
        if chain and self._chained_start is not None:
            self._chained_start()
        try:
            self.republish_release()
        except (LearningError, SdaError) as exc:  # the coordinator must start anyway; the next release fixes it
            log.error("could not publish the last release of %s again: %s", self.release_spec.model_id, exc)

    def last_release(self) -> bytes | None:
        """The sealed bytes of the release the FedAdam state says was released last, from `state_dir` (None
        without one). A release file newer than the state (written, then a crash before the state was saved)
        was never published and its version will be issued again, so it is not the last release."""
        version = self.state.released_version
        if self.state_dir is None or version == 0:
            return None
        path = self.state_dir / f"release-{self.release_spec.model_id}-{version}.bin"
        if not path.exists():
            raise LearningError(f"the state says release {version} of {self.release_spec.model_id!r} was made,"
                                f" but {path} is missing")
        return path.read_bytes()

    def republish_release(self) -> Release | None:
        """Publish the last sealed release again, retained (after a restart: the broker may have lost it);
        checked first as devices will check it. The release, or None when there is none yet."""
        sealed = self.last_release()
        if sealed is None:
            return None
        spec = self.release_spec
        release = verify_release(sealed, self.coordinator.identity.public().sign_key, 0, spec.backbone_sha256,
                                 spec.coordinator_id, spec.model_id)
        publish_release(self.coordinator.transport, spec.model_id, sealed)
        log.info("release %d of %s published again", release.version, spec.model_id)
        return release

    def wait(self, round_id: str, timeout_s: float = 120.0) -> RoundOutcome:
        """The round's outcome once it was handled; LearningError on timeout."""
        with self._w.cond:
            if not self._w.cond.wait_for(lambda: round_id in self._w.done, timeout_s):
                raise LearningError(f"learning round {round_id!r} not finished within {timeout_s:g} s")
            return self._w.done[round_id]

    def _on_finished(self, agg: str) -> None:
        if self._chained is not None:
            self._chained(agg)
        if not is_learning_round(agg, self.release_spec.model_id):
            return
        try:
            outcome = self.finish(agg)
        except Exception as exc:  # the coordinator's worker must go on
            log.exception("learning round %s: handling the reveal failed", agg)
            outcome = RoundOutcome(agg, error=f"handling the reveal failed: {exc}")
        with self._w.cond:
            self._w.done[agg] = outcome
            self._w.cond.notify_all()

    def finish(self, agg: str, now: float | None = None) -> RoundOutcome:
        """Apply a finished round: FedAdam step, validation gate, and a signed release published retained."""
        row = self.coordinator.store.aggregation(agg)
        if row is None or row.state != "revealed" or row.result is None or row.announce is None:
            error = "unknown round" if row is None else f"{row.state}: {row.error}"
            log.warning("learning round %s produced no sum: %s", agg, error)
            return RoundOutcome(agg, error=error)
        a = Announce.decode(Envelope.decode(row.announce).payload)
        spec = RoundSpec.from_announce(a, self.release_spec.clip_norm, self.config.accounting)
        field_sum = np.asarray(row.result["field_sum"], np.int64)
        # sda counts devices in "participants" and noise-adding clerks apart: the mean is over devices.
        participants = int(row.result["participants"])
        noise_participants = int(row.result.get("noise_participants", 0))
        if a.noise_added_by == NoiseMode.CLERKS and noise_participants != a.n:
            return RoundOutcome(agg, error=f"clerk noise from {noise_participants} of {a.n} clerks")
        g = mean_gradient(field_sum, a.scale, participants)
        now = time.time() if now is None else now
        with self._lock:
            state = apply_round(self.state, agg, g, spec.cost())
            state, release, decision = propose_release(state, self.like, self.vset, self.release_spec, now,
                                                       self.release_policy)
            sealed = seal_release(release, self.coordinator.identity) if release is not None else None
            if self.state_dir is not None:  # the state first: a restart never reuses a version
                self.state_dir.mkdir(parents=True, exist_ok=True)
                if release is not None and sealed is not None:
                    write_atomic(self.state_dir / f"release-{release.model_id}-{release.version}.bin", sealed)
                assert self._state_path is not None
                save_state(self._state_path, state)
            self.state = state
        if release is not None and sealed is not None:
            publish_release(self.coordinator.transport, release.model_id, sealed)
            log.info("learning round %s (%d devices): release %d published; %s", agg, participants,
                     release.version, decision.reason)
        else:
            log.info("learning round %s (%d devices): %s", agg, participants, decision.reason)
        return RoundOutcome(agg, participants, field_sum, g, decision, release, sealed)

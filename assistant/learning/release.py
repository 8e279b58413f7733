"""Signed model releases (DESIGN §6: `sda/v1/model/{model}/release`, written by the coordinator only,
retained, signed; §8: the coordinator releases, devices verify, evaluate and hot-swap).

Wire form: `Release`, a strict msgpack message in the style of sda.protocol.messages (every field
validated on decode, unknown or missing keys refused), inside sda's envelope signed with the
coordinator's Ed25519 identity. It carries the head's parameters as little-endian float32 (the
layout of `Head.flat`: W1 row-major, b1, w2, b2) with the shapes (window, embed, hidden); the SHA-256 of
the backbone the head was trained on; the L2 clip C devices use in the rounds on this head (the
announce has no such field: participate.RoundSpec.from_announce takes it from here); the validation
metrics the coordinator measured; the rounds applied since the previous release; and the central
(epsilon, delta) of the parameters: every round that ever touched the server state composed as zCDP
(the privacy of a sum is one device's round cost, since the zero-out neighbour removes one device's
whole input), so the statement covers the model, not only its last round.

Device side, `verify_release` refuses, each with its own error and one log line (a warning; debug for
the version already handled, which is the retained message coming back on every reconnect): input over
MAX_RELEASE_BYTES or not an envelope (MalformedRelease), a signer other than the pinned coordinator or
a signature that does not verify, i.e. any tampering with the payload (BadReleaseSignature), a payload
that is not a well-formed release (MalformedRelease), a release of another model (WrongModel), a
version not above the highest this device has seen: a replay of an old release (StaleRelease), and a
head for another backbone (WrongBackbone). The signature is checked before the payload is parsed.

The coordinator side: `propose_release` turns the FedAdam state into a candidate, measures it and the
released head on the validation set, and either builds the next release (version + 1) or discards the
step; `seal_release` signs it; `publish_release` puts it on the retained topic. Save the FedAdam
state before publishing and keep the sealed bytes: a restarted coordinator republishes them (the
device sees a duplicate), and never reuses a version for other parameters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from sda import crypto
from sda.errors import BadSignature, MessageError
from sda.mqtt import topics
from sda.protocol import codec as c
from sda.protocol.messages import Envelope, Message, seal

from ..kws.head import Head
from .errors import LearningError
from .fedadam import FedAdamState, discard_step, mark_released
from .gradient import unflatten
from .privacy import DEFAULT_DELTA, epsilon_of
from .validation import Metrics, ReleaseDecision, ReleasePolicy, ValidationSet, decide_release, evaluate

log = logging.getLogger(__name__)

#: Most parameters a released head may have (1 MiB of float32; the shipped head has 32,833).
MAX_PARAMS = 2**18
#: Most round ids one release lists.
MAX_ROUNDS = 1024
#: Larger input is refused before any parsing. A retained message must also fit one broker packet
#: (Transport refuses to chunk it), 256 KiB by default: heads up to ~60,000 parameters.
MAX_RELEASE_BYTES = 4 * MAX_PARAMS + 128 * MAX_ROUNDS + 4096
_TIME_MAX = 2.0**40
_HUGE = 1e300


class ReleaseError(LearningError):
    """A release this device does not install; the message says why."""


class MalformedRelease(ReleaseError):
    """Bytes that are not a well-formed release: oversized, not an envelope, bad fields or shapes."""


class BadReleaseSignature(ReleaseError):
    """Not signed by the pinned coordinator, or the signature does not verify (tampered)."""


class WrongModel(ReleaseError):
    """A release of another model than the one this device runs."""


class StaleRelease(ReleaseError):
    """A version not above the highest this device has seen: a duplicate or a replay of an older release."""

    def __init__(self, message: str, version: int, highest: int):
        super().__init__(message)
        self.version, self.highest = version, highest


class WrongBackbone(ReleaseError):
    """A head trained on another backbone than the one on this device."""


def _metrics(where: str, v: Any) -> Metrics:
    if not isinstance(v, list) or len(v) != 7:
        raise MessageError(f"{where}: expected [loss, accuracy, frr, fa_budget, fa_threshold, positives, negatives]")
    return Metrics(c.number(0, _HUGE)(f"{where}.loss", v[0]), c.number(0, 1)(f"{where}.accuracy", v[1]),
                   c.number(0, 1)(f"{where}.frr", v[2]), c.number(0, 1)(f"{where}.fa_budget", v[3]),
                   c.number(-_HUGE, _HUGE)(f"{where}.fa_threshold", v[4]),
                   c.integer(0, 2**40)(f"{where}.positives", v[5]), c.integer(0, 2**40)(f"{where}.negatives", v[6]))


def head_size(window: int, embed: int, hidden: int) -> int:
    """Parameters of a head of these shapes: W1 (window*embed, hidden), b1, w2 (hidden,), b2."""
    return window * embed * hidden + 2 * hidden + 1


@dataclass(frozen=True)
class Release(Message):
    """A model release: the head's parameters and what the coordinator states about them."""

    TYPE: ClassVar[str] = "model_release"
    model_id: str
    coordinator_id: str
    version: int
    window: int
    embed: int
    hidden: int
    params: bytes  # float32 little-endian, Head.flat's layout
    backbone_sha256: bytes
    clip_norm: float
    validation: Metrics
    rounds: tuple[str, ...]
    epsilon: float
    delta: float
    created_s: float

    SCHEMA: ClassVar[dict[str, c.Validator]] = {
        "model_id": c.ident(),
        "coordinator_id": c.ident(),
        "version": c.integer(1, 2**40),
        "window": c.integer(1, 1024),
        "embed": c.integer(1, 4096),
        "hidden": c.integer(1, 4096),
        "params": c.blob(max_len=4 * MAX_PARAMS, multiple=4),
        "backbone_sha256": c.blob(exact=32),
        "clip_norm": c.number(1e-12, 2.0**31),
        "validation": _metrics,
        "rounds": c.array_of(c.ident(), 0, MAX_ROUNDS),
        "epsilon": c.number(0, 2.0**31),
        "delta": c.number(0, 1),
        "created_s": c.number(0, _TIME_MAX),
    }

    def __post_init__(self) -> None:
        # Cross-field checks: shapes against the parameter bytes (in this order, so no product can grow big).
        if self.window * self.embed > MAX_PARAMS or head_size(self.window, self.embed, self.hidden) > MAX_PARAMS:
            raise MessageError(f"{self.TYPE}: a head of ({self.window}, {self.embed}, {self.hidden}) has more than"
                               f" {MAX_PARAMS} parameters")
        want = 4 * head_size(self.window, self.embed, self.hidden)
        if len(self.params) != want:
            raise MessageError(f"{self.TYPE}.params: a ({self.window}, {self.embed}, {self.hidden}) head needs {want}"
                               f" bytes, got {len(self.params)}")
        if not np.isfinite(np.frombuffer(self.params, "<f4")).all():
            raise MessageError(f"{self.TYPE}.params: a parameter is NaN or infinite")
        if self.delta >= 1:
            raise MessageError(f"{self.TYPE}.delta: expected < 1, got {self.delta}")

    def head(self) -> Head:
        """The released head (float64 parameters, exactly the float32 values)."""
        d, h = self.window * self.embed, self.hidden
        like = Head(np.zeros((d, h)), np.zeros(h), np.zeros(h), np.zeros(()), self.window, self.embed)
        return like.with_flat(np.frombuffer(self.params, "<f4").astype(np.float64))


def params_bytes(head: Head) -> bytes:
    """The head's parameters as little-endian float32 (Head.flat's order); LearningError if one does not fit."""
    with np.errstate(over="ignore"):
        v = head.flat().astype("<f4")
    if not np.isfinite(v).all():
        raise LearningError("a head parameter is NaN or beyond float32's range")
    return v.tobytes()


def as_released(head: Head) -> Head:
    """The head as devices will run it: every parameter rounded to float32."""
    return head.with_flat(np.frombuffer(params_bytes(head), "<f4").astype(np.float64))


def build_release(model_id: str, coordinator_id: str, version: int, head: Head, backbone_sha256: str,
                  clip_norm: float, validation: Metrics, rounds: tuple[str, ...], epsilon: float, delta: float,
                  created_s: float) -> Release:
    """A Release of `head` (its float32 rounding); `backbone_sha256` in hex as model cards keep it."""
    try:
        sha = bytes.fromhex(backbone_sha256)
        return Release(model_id, coordinator_id, version, head.window, head.embed, head.b1.size, params_bytes(head),
                       sha, float(clip_norm), validation, tuple(rounds), float(epsilon), float(delta),
                       float(created_s))
    except (ValueError, MessageError) as exc:
        raise LearningError(f"cannot build release {version} of {model_id!r}: {exc}") from None


def seal_release(release: Release, identity: crypto.Identity) -> bytes:
    """The release signed by the coordinator (as release.coordinator_id): envelope bytes to publish."""
    raw = seal(release, release.coordinator_id, identity)
    if len(raw) > MAX_RELEASE_BYTES:
        raise LearningError(f"release {release.version} is {len(raw)} bytes; devices refuse over {MAX_RELEASE_BYTES}")
    return raw


def publish_release(transport: Any, model_id: str, envelope: bytes, timeout_s: float = 10.0) -> None:
    """Publish a sealed release retained on its topic (sda.mqtt.Transport) and wait for the broker's
    acknowledgement; LearningError when it does not come."""
    infos = transport.publish(topics.release(model_id), envelope, retain=True)
    if not transport.wait_published(infos, timeout_s):
        raise LearningError(f"the broker did not acknowledge release of {model_id!r} within {timeout_s:g} s")


def _refuse(exc: ReleaseError, level: int = logging.WARNING) -> ReleaseError:
    log.log(level, "release refused: %s", exc)
    return exc


def verify_release(raw: bytes, coordinator_public_key: bytes, current_version: int, backbone_sha256: str,
                   coordinator_id: str = "coordinator", model_id: str | None = None) -> Release:
    """The release in `raw` if the pinned coordinator signed it, it is well formed, for `model_id` (when given),
    newer than `current_version` (the highest this device has seen) and for the backbone of hex SHA-256
    `backbone_sha256`; otherwise the ReleaseError subclass that says why (logged once)."""
    if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_RELEASE_BYTES:
        size = len(raw) if isinstance(raw, bytes | bytearray) else type(raw).__name__
        raise _refuse(MalformedRelease(f"release input of {size} bytes; at most {MAX_RELEASE_BYTES} are read"))
    try:
        env = Envelope.decode(bytes(raw))
    except MessageError as exc:
        raise _refuse(MalformedRelease(f"not a signed envelope: {exc}")) from None
    if env.signer != coordinator_id:
        raise _refuse(BadReleaseSignature(f"release signed by {env.signer!r}, not the coordinator {coordinator_id!r}"))
    try:
        env.verify(coordinator_public_key)
    except BadSignature:
        raise _refuse(BadReleaseSignature(f"the signature of {coordinator_id!r} does not verify: the release was"
                                          " altered or signed with another key")) from None
    try:
        r = Release.decode(env.payload)
    except MessageError as exc:
        raise _refuse(MalformedRelease(f"signed, but not a well-formed release: {exc}")) from None
    if r.coordinator_id != env.signer:
        raise _refuse(BadReleaseSignature(f"release names coordinator {r.coordinator_id!r}, signed by {env.signer!r}"))
    if model_id is not None and r.model_id != model_id:
        raise _refuse(WrongModel(f"release of model {r.model_id!r}; this device runs {model_id!r}"))
    if r.version <= current_version:
        what = "a duplicate of" if r.version == current_version else "older than"
        # The same version again is the retained message coming back on a reconnect: routine, not an attack.
        raise _refuse(StaleRelease(f"release {r.version} of {r.model_id!r} is {what} version {current_version}, the"
                                   " highest seen here (replayed or already handled)", r.version, current_version),
                      logging.DEBUG if r.version == current_version else logging.WARNING)
    if r.backbone_sha256.hex() != backbone_sha256.lower():
        raise _refuse(WrongBackbone(f"release {r.version} is for backbone {r.backbone_sha256.hex()[:16]}..., this"
                                    f" device runs {backbone_sha256[:16]}..."))
    return r


# --- the coordinator's decision -------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseSpec:
    """What the coordinator states about its model, and how it measures candidates (threshold: the detector's
    probability threshold for the accuracy; fa_budget: see validation.evaluate)."""

    model_id: str
    coordinator_id: str
    backbone_sha256: str
    clip_norm: float
    delta: float = DEFAULT_DELTA
    threshold: float = 0.5
    fa_budget: float = 0.01


def stated_epsilon(state: FedAdamState, delta: float) -> float:
    """The central epsilon at `delta` of everything derived from the state's rounds (0 before any round)."""
    return 0.0 if state.rho == 0 else epsilon_of(state.rho, delta)


def propose_release(state: FedAdamState, like: Head, vset: ValidationSet, spec: ReleaseSpec, now: float,
                    policy: ReleasePolicy | None = None) -> tuple[FedAdamState, Release | None, ReleaseDecision]:
    """Measure the state's parameters (as float32, as devices would run them) against the released head on
    `vset`. Not worse (validation.decide_release): the next release and the state marked released at exactly
    those parameters. Worse: no release, and the step discarded (fedadam.discard_step). `like` gives the shapes."""
    candidate = as_released(unflatten(state.params, like))
    current = unflatten(state.released, like)
    decision = decide_release(evaluate(candidate, vset, spec.threshold, spec.fa_budget),
                              evaluate(current, vset, spec.threshold, spec.fa_budget), policy)
    if not decision.release:
        return discard_step(state), None, decision
    version = state.released_version + 1
    epsilon = stated_epsilon(state, spec.delta)
    if not math.isfinite(epsilon):
        raise LearningError("the state's rounds add up to an unbounded epsilon; nothing derived from them is released")
    release = build_release(spec.model_id, spec.coordinator_id, version, candidate, spec.backbone_sha256,
                            spec.clip_norm, decision.candidate, state.pending[-MAX_ROUNDS:], epsilon,
                            spec.delta if state.rho else 0.0, now)
    return mark_released(replace(state, params=candidate.flat()), version), release, decision

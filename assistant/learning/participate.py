"""The device's side of a learning round (DESIGN §8), the thin shell over the pure modules: read the
labelled rows from the store, decide, compute the clipped gradient, quantise it, add this device's
noise share, hand `sda`'s participant its input, and spend privacy only once the participation is
acknowledged.

    spec = RoundSpec.from_announce(announce, clip_norm=C)
    prepared = prepare(store, head, spec, rng)          # NotEligible(decision) when the device stays out
    x = prepared.participant_input(announce)            # (d,) float for sda's Participant.participate
    ...participation recorded by sda's ParticipationLog, published...
    prepared.commit(store)                              # the privacy ledger row; rows marked learned

`sda`'s Participant takes a float vector and encodes it with the announce's fixed point (stochastic
rounding, clipped to [clip_lo, clip_hi]). `participant_input` gives it the float whose encoding is
exactly this device's integers (gradient + noise share): each integer over the scale, which is exact
when the scale is a power of two, so the rounding has nothing to round. Both conditions are checked on
the announce, before any data is looked at (a refusal that depended on the values would leak them):
the scale must be a power of two, and the clip range must hold the noise share too
(`RoundSpec.clip_range`), since clipping a noisy value would silently change the noise.

Crash window: a participation sent but not yet committed is not in the ledger. Call `commit` as soon as
sda has recorded the participation (its ParticipationLog.record runs before the publish), not after a
reply from the coordinator, so the window is one local write.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from sda.encoding import check_capacity
from sda.errors import SdaError
from sda.protocol.messages import Announce

from ..kws.head import Head
from ..store import LearningRound, Record, RoundStatus, Store
from .errors import LearningError
from .gradient import device_gradient, implicit_negative, usable
from .noise import NoiseMode, noise_headroom, participant_noise_share, share_bound, share_variance
from .policy import Eligibility, LearningPolicy, Refusal, decide
from .privacy import DEFAULT_DELTA, Accounting, RoundCost, load_ledger, record_round
from .quantise import codec, l1_sensitivity, l2_sensitivity, quantise, to_field

#: The noise mechanisms this device can add and account for.
MECHANISMS = ("none", "skellam")


@dataclass(frozen=True)
class RoundSpec:
    """An announced learning round as the device needs it. `sigma` is the standard deviation of the total
    noise in quantised units (gradient times `scale`), like the announce's noise_headroom."""

    round_id: str
    dimension: int
    clip_norm: float  # L2 bound C on the float gradient
    scale: float  # quantised units per 1.0
    p: int
    min_participants: int
    max_participants: int
    noise_mechanism: str = "skellam"
    noise_added_by: NoiseMode = NoiseMode.PARTICIPANTS
    sigma: float = 0.0
    n: int = 1  # committee size and privacy threshold: clerk noise is split over n - t
    t: int = 0
    accounting: Accounting = Accounting.SKELLAM

    def __post_init__(self) -> None:
        if self.noise_mechanism not in MECHANISMS:
            raise LearningError(f"round {self.round_id}: noise mechanism {self.noise_mechanism!r} is not one this"
                                f" device adds or accounts for; it knows {list(MECHANISMS)}")
        object.__setattr__(self, "noise_added_by", NoiseMode(self.noise_added_by))
        object.__setattr__(self, "accounting", Accounting(self.accounting))
        if (self.noise_mechanism == "none") != (self.noise_added_by is NoiseMode.NONE):
            raise LearningError(f"round {self.round_id}: mechanism {self.noise_mechanism!r} with noise added by"
                                f" {self.noise_added_by.value!r}; both must be 'none' or neither")
        for name in ("dimension", "min_participants", "max_participants", "n"):
            if getattr(self, name) < 1:
                raise LearningError(f"round {self.round_id}: {name} must be >= 1, got {getattr(self, name)}")
        if not (self.clip_norm > 0 and self.scale > 0 and math.isfinite(self.clip_norm * self.scale)):
            raise LearningError(f"round {self.round_id}: need clip_norm > 0 and scale > 0, got {self.clip_norm},"
                                f" {self.scale}")
        share_variance(self.sigma, self.noise_added_by, self.min_participants, self.n, self.t)  # checks sigma, n, t

    @classmethod
    def from_announce(cls, a: Announce, clip_norm: float, accounting: Accounting = Accounting.SKELLAM) -> RoundSpec:
        """The spec of an announce (its noise_sigma in quantised units). The L2 clip C is not an announce field,
        so it comes from the round's other channel (the model release) as `clip_norm`."""
        return cls(a.aggregation_id, a.dimension, clip_norm, a.scale, a.p, a.min_participants, a.max_participants,
                   a.noise_mechanism, NoiseMode(a.noise_added_by), a.noise_sigma, a.n, a.t, accounting)

    @property
    def l2_sensitivity(self) -> float:
        """The bound on one device's ||q||_2 in quantised units (conditional rounding)."""
        return l2_sensitivity(self.clip_norm, self.scale, self.dimension)

    @property
    def variance(self) -> float:
        """Variance of the total noise per coordinate, quantised units (0 without noise)."""
        return 0.0 if self.noise_added_by is NoiseMode.NONE else self.sigma**2

    def cost(self) -> RoundCost:
        """What taking part spends (zero-out neighbouring, noise variance sigma^2; see privacy)."""
        l2 = self.l2_sensitivity
        if self.accounting is Accounting.GAUSSIAN:
            return RoundCost.gaussian(l2, math.sqrt(self.variance))
        return RoundCost.skellam(l2, l1_sensitivity(l2, self.dimension), self.variance)

    @property
    def device_share_variance(self) -> float:
        """Variance of the noise this device adds (0 unless participants add it)."""
        if self.noise_added_by is not NoiseMode.PARTICIPANTS:
            return 0.0
        return share_variance(self.sigma, NoiseMode.PARTICIPANTS, self.min_participants)

    @property
    def value_bound(self) -> int:
        """Bound on |one coordinate| of one device's quantised gradient, in quantised units."""
        return min(codec(self.clip_norm, self.scale).max_abs_value, math.floor(self.l2_sensitivity))

    @property
    def noise_headroom(self) -> int:
        """Bound on |total noise| of one coordinate of the sum (truncated shares)."""
        return noise_headroom(self.sigma, self.noise_added_by, self.max_participants, self.min_participants,
                              self.n, self.t)

    @property
    def clip_range(self) -> float:
        """The smallest clip_hi (and -clip_lo) an announce of this round may have: one device's input, gradient
        plus noise share, re-encoded by sda's participant, must never be clipped."""
        return (self.value_bound + share_bound(self.device_share_variance)) / self.scale

    def check_capacity(self) -> None:
        """N_max * value_bound + noise_headroom < p/2 (sda.encoding.check_capacity); LearningError if not."""
        try:
            check_capacity(self.p, self.max_participants, self.value_bound, self.noise_headroom)
        except SdaError as exc:
            raise LearningError(f"round {self.round_id}: {exc}") from None


class NotEligible(LearningError):
    """The device stays out of this round; `decision` says why."""

    def __init__(self, decision: Eligibility):
        super().__init__(decision.reason)
        self.decision = decision


#: A near miss left unlabelled this long is an implicit negative (gradient.implicit_negative).
IMPLICIT_AFTER_S = 86_400.0


def labelled_records(store: Store, page: int = 500, implicit_before: float | None = None) -> list[Record]:
    """Every labelled row of the store, and the implicit negatives older than `implicit_before` (None: none),
    newest first (paged by key, so rows arriving meanwhile do not shift it)."""
    out: list[Record] = []
    before = None
    while True:
        rows = store.review_queue(unlabelled_only=False, limit=page, before=before)
        out += [r for r in rows if r.label is not None or implicit_negative(r, implicit_before)]
        if len(rows) < page:
            return out
        before = (rows[-1].time_s, rows[-1].id)


def new_labels(records: list[Record], head: Head) -> int:
    """Labelled rows `head` can learn from (gradient.usable) that no round has used yet: never in a completed
    round, or relabelled since."""
    return sum(1 for r in records if usable(r, head) and (
        r.learned_at is None or (r.labelled_at is not None and r.labelled_at > r.learned_at)))


@dataclass(frozen=True, eq=False)  # eq=False: ndarray field
class PreparedParticipation:
    """One device's input to a round, not yet spent: `values` (d,) int64, signed quantised units, is the
    conditionally rounded gradient plus this device's noise share."""

    spec: RoundSpec
    values: np.ndarray
    cost: RoundCost
    ids: tuple[int, ...]  # store rows behind the gradient
    decision: Eligibility
    gradient_norm: float  # before clipping
    delta: float = DEFAULT_DELTA

    @property
    def label_count(self) -> int:
        """Labelled examples the gradient was computed over."""
        return len(self.ids)

    @property
    def encoded(self) -> np.ndarray:
        """`values` in Z_p: (d,) int64 in [0, p)."""
        return to_field(self.values, self.spec.p)

    def participant_input(self, a: Announce) -> np.ndarray:
        """(d,) float64 x with FixedPoint(a).encode(x) == self.encoded for certain: what sda's
        Participant.participate takes. LearningError when the announce is not this round's or its clip range
        could clip this device's input."""
        s = self.spec
        mismatch = [f"{name} {got!r} != {want!r}" for name, got, want in (
            ("aggregation_id", a.aggregation_id, s.round_id), ("dimension", a.dimension, s.dimension),
            ("scale", a.scale, s.scale), ("p", a.p, s.p)) if got != want]
        if mismatch:
            raise LearningError(f"announce does not match the prepared round: {', '.join(mismatch)}")
        if a.clip_hi < s.clip_range or a.clip_lo > -s.clip_range:
            raise LearningError(f"round {s.round_id}: the announce's clip range [{a.clip_lo:g}, {a.clip_hi:g}] could"
                                f" clip a device's gradient plus noise share; it must cover +-{s.clip_range:.6g}")
        return exact_floats(self.values, a.scale, a.clip_lo, a.clip_hi)

    def commit(self, store: Store, status: RoundStatus = RoundStatus.COMPLETED,
               time_s: float | None = None) -> LearningRound:
        """Spend the round in the store's privacy ledger (once: StoreError for a round id already there) and,
        for a completed round, mark its rows learned. Call once sda has recorded the participation."""
        row = record_round(store, self.spec.round_id, self.cost, self.label_count, status, time_s, self.delta)
        if status is RoundStatus.COMPLETED:
            store.mark_learned(self.ids, time_s)
        return row


def exact_floats(values: np.ndarray, scale: float, lo: float, hi: float) -> np.ndarray:
    """(d,) int64 v -> (d,) float64 x = v / scale with clip(x, lo, hi) * scale == v exactly, so the stochastic
    rounding of x is v with certainty. Exact for a power-of-two scale (|v| < 2^53); LearningError otherwise."""
    if math.frexp(scale)[0] != 0.5:
        raise LearningError(f"scale {scale!r} is not a power of two: v / scale * scale is not exact for every"
                            " integer v, so sda's rounding could move this device's values")
    v = np.asarray(values, np.int64)
    x = v.astype(np.float64) / scale
    if not np.array_equal(np.clip(x, lo, hi) * scale, v.astype(np.float64)):
        raise LearningError(f"values do not fit the clip range [{lo:g}, {hi:g}] at scale {scale:g}")
    return x


def eligibility(store: Store, head: Head, spec: RoundSpec, policy: LearningPolicy | None = None,
                delta: float = DEFAULT_DELTA) -> Eligibility:
    """Whether this device takes part in `spec`'s round with `head` (policy.decide over the store's state)."""
    records = labelled_records(store)
    return decide(store.settings(), new_labels(records, head), load_ledger(store, delta), spec.cost(), policy)


def prepare(store: Store, head: Head, spec: RoundSpec, rng: np.random.Generator,
            policy: LearningPolicy | None = None, delta: float = DEFAULT_DELTA,
            implicit_after_s: float | None = IMPLICIT_AFTER_S, now: float | None = None) -> PreparedParticipation:
    """The device's input to `spec`'s round from the labelled rows in `store` and the near misses left unlabelled
    for `implicit_after_s` (None: labels only); NotEligible (with the decision) when it stays out, LearningError
    when the round's parameters do not fit this head or Z_p."""
    if spec.dimension != head.size:
        raise LearningError(f"round {spec.round_id}: dimension {spec.dimension}, but the head has {head.size}"
                            " parameters")
    spec.check_capacity()
    implicit_before = None if implicit_after_s is None else (time.time() if now is None else now) - implicit_after_s
    records = labelled_records(store, implicit_before=implicit_before)
    decision = decide(store.settings(), new_labels(records, head), load_ledger(store, delta), spec.cost(), policy)
    if not decision.eligible:
        raise NotEligible(decision)
    g = device_gradient(head, records, spec.clip_norm, implicit_before)
    q = quantise(g.gradient, spec.clip_norm, spec.scale, spec.p, rng)
    if spec.noise_added_by is NoiseMode.PARTICIPANTS:
        q = q + participant_noise_share(spec.dimension, spec.sigma, spec.min_participants, rng)
    return PreparedParticipation(spec, q, spec.cost(), g.ids, decision, g.norm, delta)


def record_refusal(store: Store, spec: RoundSpec, decision: Eligibility, time_s: float | None = None
                   ) -> LearningRound | None:
    """Record a round refused for its budget (RoundStatus.REFUSED, nothing spent), for the owner's view; other
    refusals are not rounds this device was part of, and return None."""
    if decision.refusal is not Refusal.OVER_BUDGET:
        return None
    return record_round(store, spec.round_id, spec.cost(), 0, RoundStatus.REFUSED, time_s)

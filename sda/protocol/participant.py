"""The participant (a device): turns its vector into padded shares and a sealed mask seed."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import crypto
from .. import field as F
from ..errors import AlreadyProcessed, ParameterError, ProtocolError
from .messages import Announce, Participation, seal
from .params import check_announce, fixed_point_of


@dataclass(frozen=True)
class ParticipantPolicy:
    """What the device's owner accepts: the smallest crowd to hide in, and noise requirements."""

    min_participants: int = 100
    require_noise: bool = False


@dataclass(frozen=True)
class Participated:
    """Outcome of a participation: persist `aggregation_id` as done, then publish `envelope`."""

    aggregation_id: str
    envelope: bytes


def seed_info(aggregation_id: str, device_id: str) -> bytes:
    """HPKE info binding a sealed seed to its aggregation and device."""
    return b"sda/v1/seed\x00" + aggregation_id.encode() + b"\x00" + device_id.encode()


class Participant:
    """One device's side of the protocol. Holds no socket and no clock.

    participated: ids of aggregations already joined (a persisted set); a second participation
    in the same aggregation is refused, since two masked inputs would be summed twice.
    committee_check: optional extra check of the announce's committee (the verifiable draw).
    """

    def __init__(
        self,
        device_id: str,
        identity: crypto.Identity,
        policy: ParticipantPolicy | None = None,
        pairwise: crypto.PairwiseKeys | None = None,
        participated: set[str] | None = None,
        committee_check: Callable[[Announce], None] | None = None,
    ):
        self.device_id = device_id
        self.identity = identity
        self.policy = policy or ParticipantPolicy()
        self.pairwise = pairwise or crypto.PairwiseKeys(identity.exchange)
        self.participated = set() if participated is None else participated
        self.committee_check = committee_check

    def check(self, a: Announce, now: float) -> None:
        """Refuse an announce this device must not take part in (ParameterError/ProtocolError)."""
        check_announce(a)
        if a.min_participants < self.policy.min_participants:
            raise ParameterError(
                f"announce {a.aggregation_id}: min_participants={a.min_participants} is below this"
                f" device's policy of {self.policy.min_participants}"
            )
        if self.policy.require_noise and a.noise_mechanism == "none":
            raise ParameterError(f"announce {a.aggregation_id}: policy requires DP noise")
        if now > a.participation_deadline:
            raise ProtocolError(f"announce {a.aggregation_id}: participation deadline has passed")
        if a.aggregation_id in self.participated:
            raise AlreadyProcessed(f"already participated in {a.aggregation_id}")
        if self.committee_check is not None:
            self.committee_check(a)

    def participate(
        self,
        a: Announce,
        x: np.ndarray,
        now: float,
        rng: np.random.Generator | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> Participated:
        """Encode, mask, share, pad and seal x: (d,) float. Records the aggregation as joined.

        rng drives stochastic rounding only; every secret comes from random_bytes.
        """
        self.check(a, now)
        x = np.asarray(x, np.float64)
        if x.shape != (a.dimension,):
            raise ParameterError(f"input must have shape ({a.dimension},), got {x.shape}")
        encoded = fixed_point_of(a).encode(x, a.p, rng or np.random.default_rng())
        msg = share_input(a, self.device_id, self.pairwise, encoded, random_bytes)
        self.participated.add(a.aggregation_id)
        return Participated(a.aggregation_id, seal(msg, self.device_id, self.identity))


def share_input(a: Announce, party_id: str, pairwise: crypto.PairwiseKeys, encoded: np.ndarray,
                random_bytes: Callable[[int], bytes] = os.urandom) -> Participation:
    """Step 2 of DESIGN §3 for an input already in Z_p (encoded: (d,) int64 in [0, p)): mask with a fresh
    seed, packed-Shamir-share, pad each clerk's share with the pairwise PRF, seal the seed to the recipient.
    Devices and noise-adding clerks (sda.protocol.noise_participant) both go through here."""
    scheme = check_announce(a)
    p, B = a.p, a.blocks
    seed = random_bytes(crypto.SEED_BYTES)
    masked = F.add(encoded, crypto.mask(seed, a.aggregation_id, a.dimension, p), p)
    shares = scheme.share(masked, crypto.random_field_elements(a.t * B, p, random_bytes))
    keys = pairwise.keys_for([m.box_key for m in a.committee])
    padded = F.add(shares, crypto.pads(keys, a.aggregation_id, B, p), p)
    return Participation(
        aggregation_id=a.aggregation_id,
        device_id=party_id,
        padded_shares=F.to_uint32_bytes(padded.reshape(-1)),
        sealed_seed=crypto.seal_to(a.recipient_key, seed, seed_info(a.aggregation_id, party_id)),
    )

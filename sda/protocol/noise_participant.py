"""A clerk as a noise participant (DESIGN §3, noise added by clerks): in step 2 of an aggregation announced
with noise_added_by = "clerks", every committee member submits a participation whose input is its own
bounded Skellam share of variance sigma^2 / (n - t), masked, shared and padded exactly like a device's.

Who the noise participants are needs no extra message: they are the announce's committee, by position,
signed with the committee's keys. The server sums their padded shares with the devices', every clerk
removes their pads too, and the recipient removes their masks, so the reveal is sum(devices) + noise and
no party but the clerk ever sees one clerk's share. The server snapshots only with all n noise shares in,
and every clerk refuses a job otherwise (it sums all n pads), so no server can leave honest noise out.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .. import crypto
from ..errors import AlreadyProcessed, ProtocolError
from ..noise import clerk_noise_share
from .messages import Announce, seal
from .params import check_announce
from .participant import Participated, share_input


def adds_clerk_noise(a: Announce) -> bool:
    """True when the committee of `a` takes part as noise participants."""
    return a.noise_added_by == "clerks"


def noise_sign_keys(a: Announce) -> dict[str, bytes]:
    """clerk_id -> Ed25519 key of the noise participants of `a` (empty unless clerks add noise)."""
    return {m.clerk_id: m.sign_key for m in a.committee} if adds_clerk_noise(a) else {}


class NoiseParticipant:
    """One clerk's noise contribution. Holds no socket and no clock.

    contributed: ids of aggregations already given noise (a persisted set): a second, fresh share would
    be a second draw the server could pick from, so it is refused; a service re-sends the stored one.
    """

    def __init__(self, clerk_id: str, identity: crypto.Identity, pairwise: crypto.PairwiseKeys | None = None,
                 contributed: set[str] | None = None):
        self.clerk_id = clerk_id
        self.identity = identity
        self.pairwise = pairwise or crypto.PairwiseKeys(identity.exchange)
        self.contributed = set() if contributed is None else contributed

    def check(self, a: Announce, now: float) -> None:
        """Refuse an announce this clerk must not add noise to (ParameterError/ProtocolError)."""
        check_announce(a)  # includes the headroom of n clerk shares (params.check_clerk_noise)
        if not adds_clerk_noise(a):
            raise ProtocolError(f"{a.aggregation_id}: noise is added by {a.noise_added_by!r}, not by clerks")
        me = a.member_index(self.clerk_id)
        pub = self.identity.public()
        if me is None or (a.committee[me].sign_key, a.committee[me].box_key) != (pub.sign_key, pub.box_key):
            raise ProtocolError(f"{a.aggregation_id}: {self.clerk_id} is not on the committee with these keys")
        if now > a.participation_deadline:
            raise ProtocolError(f"{a.aggregation_id}: participation deadline has passed")
        if a.aggregation_id in self.contributed:
            raise AlreadyProcessed(f"{a.aggregation_id}: noise already contributed")

    def contribute(self, a: Announce, now: float, rng: np.random.Generator | None = None,
                   random_bytes: Callable[[int], bytes] = os.urandom) -> Participated:
        """Draw this clerk's noise share (d,) and wrap it as a signed participation. Records the aggregation.

        rng: the noise source; by default a generator seeded from random_bytes (the share is a secret).
        """
        self.check(a, now)
        rng = rng or np.random.default_rng(int.from_bytes(random_bytes(32), "little"))
        noise = clerk_noise_share(a.dimension, a.noise_sigma, a.n, a.t, rng)
        msg = share_input(a, self.clerk_id, self.pairwise, np.mod(noise, a.p), random_bytes)
        self.contributed.add(a.aggregation_id)
        return Participated(a.aggregation_id, seal(msg, self.clerk_id, self.identity))

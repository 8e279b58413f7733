"""The recipient: opens the clerks' shares of the sum, decodes them as a Reed-Solomon codeword
(correcting and naming wrong clerks), and removes the participants' masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import crypto
from .. import field as F
from ..encoding import centred
from ..errors import (
    AlreadyProcessed,
    CryptoError,
    MessageError,
    ProtocolError,
    ReconstructionError,
    UnknownSender,
)
from .clerk import result_info
from .messages import Announce, ClerkResult, open_signed
from .params import check_announce, fixed_point_of
from .participant import seed_info


@dataclass(frozen=True)
class Revealed:
    """The revealed sum: `values` (d,) decoded fixed point, `field_sum` (d,) centred integers.

    participants counts the devices only, the divisor of a mean; noise_participants the clerks whose noise
    shares are in the sum (clerk noise), which add noise and no value.
    """

    aggregation_id: str
    values: np.ndarray
    field_sum: np.ndarray
    participants: int
    clerks_used: tuple[str, ...]
    wrong_clerks: tuple[str, ...]
    noise_participants: int = 0


def safe_max_errors(m: int, r: int, t: int) -> int:
    """How many wrong results to correct so that t colluding clerks can never steer decoding
    to a wrong sum: at most floor((m - r) / 2) (unique decoding) and at most m - r - t (so
    t errors stay detectable even when they cannot be corrected)."""
    return max(0, min((m - r) // 2, m - r - t))


class Recipient:
    """Reveal one aggregation. Holds no socket and no clock.

    sealed_seeds: (device_id, sealed seed) of every device in the snapshot; noise_seeds: (clerk_id, sealed
    seed) of the noise-adding clerks (Snapshot.noise_seeds), whose masks are removed too.
    """

    def __init__(
        self,
        identity: crypto.Identity,
        announce: Announce,
        snapshot_hash: bytes,
        sealed_seeds: Sequence[tuple[str, bytes]],
        noise_seeds: Sequence[tuple[str, bytes]] = (),
    ):
        self.scheme = check_announce(announce)
        self.identity = identity
        self.announce = announce
        self.snapshot_hash = snapshot_hash
        self.sealed_seeds = tuple(sealed_seeds)
        self.noise_seeds = tuple(noise_seeds)
        noise_ids = {c for c, _ in self.noise_seeds}
        if noise_ids and (announce.noise_added_by != "clerks"
                          or not noise_ids <= {m.clerk_id for m in announce.committee}):
            raise ProtocolError(f"{announce.aggregation_id}: noise seeds from parties that add no clerk noise")
        self._keys = {m.clerk_id: m.sign_key for m in announce.committee}
        self._shares: dict[int, np.ndarray] = {}

    def add_result(self, raw: bytes, now: float) -> str:
        """Verify, open and keep one clerk's result; returns the clerk id.

        Raises UnknownSender/BadSignature/MessageError for bad input, AlreadyProcessed for a
        replay, ProtocolError for a result of another snapshot or after the deadline.
        """
        a = self.announce
        res, env = open_signed(raw, ClerkResult, self._keys.get)
        if res.clerk_id != env.signer:
            raise UnknownSender(f"result for {res.clerk_id!r} signed by {env.signer!r}")
        if res.aggregation_id != a.aggregation_id:
            raise ProtocolError(f"result for {res.aggregation_id!r}, not {a.aggregation_id!r}")
        if res.snapshot_hash != self.snapshot_hash:
            raise ProtocolError(
                f"{a.aggregation_id}: result of {res.clerk_id} is for another participant set"
            )
        if now > a.result_deadline:
            raise ProtocolError(f"{a.aggregation_id}: result of {res.clerk_id} after the deadline")
        idx = a.member_index(res.clerk_id)
        assert idx is not None
        if idx in self._shares:
            raise AlreadyProcessed(f"{a.aggregation_id}: duplicate result of {res.clerk_id}")
        info = result_info(a.aggregation_id, res.clerk_id, self.snapshot_hash)
        plain = crypto.open_from(self.identity.exchange, res.sealed_share, info)
        if len(plain) != 4 * a.blocks:
            raise MessageError(f"clerk_result share: expected {4 * a.blocks} bytes, got {len(plain)}")
        try:
            self._shares[idx] = F.from_uint32_bytes(plain, a.p)
        except ValueError as exc:
            raise MessageError(f"clerk_result share: {exc}") from exc
        return res.clerk_id

    @property
    def result_count(self) -> int:
        """Results received so far."""
        return len(self._shares)

    def ready(self) -> bool:
        """True once r results are in (enough to try a reveal)."""
        return len(self._shares) >= self.scheme.r

    def reveal(self, max_errors: int | None = None) -> Revealed:
        """Decode sum(x + m), subtract sum(m), decode fixed point.

        max_errors: wrong results to correct; default `safe_max_errors` (see there). A larger
        value, up to floor((m - r) / 2), corrects more but trusts that fewer than
        m - r + 1 - max_errors clerks collude.

        Raises ReconstructionError when too few results or too many wrong ones, ProtocolError
        when a participant's seed does not open (that participant is named).
        """
        a, scheme = self.announce, self.scheme
        idx = sorted(self._shares)
        if len(idx) < scheme.r:
            raise ReconstructionError(f"{a.aggregation_id}: {len(idx)} results, need r={scheme.r}")
        shares = np.stack([self._shares[i] for i in idx])
        if max_errors is None:
            max_errors = safe_max_errors(len(idx), scheme.r, scheme.t)
        dec = scheme.decode(idx, shares, a.dimension, max_errors=max_errors)
        seeds, bad = [], []
        for device_id, sealed in self.sealed_seeds + self.noise_seeds:
            try:
                seeds.append(crypto.open_from(
                    self.identity.exchange, sealed, seed_info(a.aggregation_id, device_id)))
            except CryptoError:
                bad.append(device_id)
        if bad:
            raise ProtocolError(f"{a.aggregation_id}: sealed seeds that do not open: {bad[:10]}")
        total = F.sub(dec.secrets, crypto.mask_sum(seeds, a.aggregation_id, a.dimension, a.p), a.p)
        return Revealed(
            aggregation_id=a.aggregation_id,
            values=fixed_point_of(a).decode_sum(total, a.p),
            field_sum=centred(total, a.p),
            participants=len(self.sealed_seeds),
            clerks_used=tuple(a.committee[i].clerk_id for i in idx),
            wrong_clerks=tuple(a.committee[idx[j]].clerk_id for j in dec.wrong),
            noise_participants=len(self.noise_seeds),
        )


# Re-exported for callers that catch replays of results.
__all__ = ["AlreadyProcessed", "Recipient", "Revealed", "safe_max_errors"]

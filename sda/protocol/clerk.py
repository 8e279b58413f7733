"""The clerk: removes its pads from the summed shares and returns its share of the sum, sealed
to the recipient. It processes each aggregation at most once, whatever it is shown later."""

from __future__ import annotations

from dataclasses import dataclass

from .. import crypto
from .. import field as F
from ..errors import AlreadyProcessed, MessageError, ProtocolError, UnknownSender
from .messages import Announce, ClerkJob, ClerkResult, open_signed, seal
from .noise_participant import adds_clerk_noise
from .params import check_announce
from .registry import Registry
from .snapshot import decode_bitmap, snapshot_hash


@dataclass(frozen=True)
class ClerkDone:
    """Outcome of a job. Persist `aggregation_id` as processed together with `envelope`, then
    publish; a job delivered again after a crash is answered by re-sending the stored envelope,
    never by computing a second result."""

    aggregation_id: str
    participants: int  # devices; noise-adding clerks are not counted
    envelope: bytes


def result_info(aggregation_id: str, clerk_id: str, snap_hash: bytes) -> bytes:
    """HPKE info binding a sealed share of the sum to its aggregation, clerk and snapshot."""
    return b"sda/v1/result\x00" + aggregation_id.encode() + b"\x00" + clerk_id.encode() + snap_hash


class Clerk:
    """One clerk's side of the protocol. Holds no socket and no clock.

    processed: ids of aggregations already handled (a persisted set).
    """

    def __init__(
        self,
        clerk_id: str,
        identity: crypto.Identity,
        coordinator_id: str,
        coordinator_key: bytes,
        pairwise: crypto.PairwiseKeys | None = None,
        processed: set[str] | None = None,
    ):
        self.clerk_id = clerk_id
        self.identity = identity
        self.coordinator_id = coordinator_id
        self.coordinator_key = coordinator_key
        self.pairwise = pairwise or crypto.PairwiseKeys(identity.exchange)
        self.processed = set() if processed is None else processed

    def handle_job(self, a: Announce, raw_job: bytes, registry: Registry, now: float) -> ClerkDone:
        """Check the job against the announce and compute the share of the sum.

        a: an announce already verified (see params.open_announce). Raises AlreadyProcessed on a
        second job for the same aggregation, ProtocolError when the job must be refused.
        """
        check_announce(a)
        job, _ = open_signed(
            raw_job, ClerkJob,
            lambda s: self.coordinator_key if s == self.coordinator_id else None,
        )
        if job.clerk_id != self.clerk_id:
            raise UnknownSender(f"job for clerk {job.clerk_id!r} delivered to {self.clerk_id!r}")
        if job.aggregation_id != a.aggregation_id:
            raise ProtocolError(f"job for {job.aggregation_id!r} checked against {a.aggregation_id!r}")
        me = a.member_index(self.clerk_id)
        if me is None or a.committee[me].box_key != self.identity.public().box_key:
            raise ProtocolError(f"{a.aggregation_id}: this clerk is not on the committee")
        if a.aggregation_id in self.processed:
            raise AlreadyProcessed(f"{a.aggregation_id}: already processed; a second job is refused")
        if now > a.result_deadline:
            raise ProtocolError(f"{a.aggregation_id}: job arrived after the result deadline")
        if registry.snapshot_hash != a.registry_hash or len(registry) != a.registry_size:
            raise ProtocolError(f"{a.aggregation_id}: our registry is not the one the announce names")
        S, raw_bitmap = decode_bitmap(job.participants, a.registry_size)
        if len(S) < a.min_participants:
            raise ProtocolError(
                f"{a.aggregation_id}: {len(S)} participants, fewer than min_participants="
                f"{a.min_participants}; refusing to reveal a share of so small a sum"
            )
        if len(S) > a.max_participants:
            raise ProtocolError(f"{a.aggregation_id}: {len(S)} participants exceed max_participants")
        snap = snapshot_hash(a.digest(), raw_bitmap)
        if snap != job.snapshot_hash:
            raise ProtocolError(f"{a.aggregation_id}: snapshot hash does not match the participant set")
        B = a.blocks
        if len(job.summed_shares) != 4 * B:
            raise MessageError(
                f"clerk_job.summed_shares: expected {4 * B} bytes, got {len(job.summed_shares)}"
            )
        try:
            summed = F.from_uint32_bytes(job.summed_shares, a.p)
        except ValueError as exc:
            raise MessageError(f"clerk_job.summed_shares: {exc}") from exc
        box_keys = registry.box_keys
        peers = [box_keys[int(i)] for i in S]
        if adds_clerk_noise(a):
            # The noise set is the whole committee (this clerk included), fixed by the announce: the sum
            # only unpads if the server put every clerk's noise in, so honest noise cannot be left out.
            peers += [m.box_key for m in a.committee]
        keys = self.pairwise.keys_for(peers)
        share = F.sub(summed, crypto.pad_sum(keys, a.aggregation_id, B, a.p), a.p)
        result = ClerkResult(
            aggregation_id=a.aggregation_id,
            clerk_id=self.clerk_id,
            snapshot_hash=snap,
            sealed_share=crypto.seal_to(
                a.recipient_key, F.to_uint32_bytes(share), result_info(a.aggregation_id, self.clerk_id, snap)
            ),
        )
        self.processed.add(a.aggregation_id)
        return ClerkDone(a.aggregation_id, len(S), seal(result, self.clerk_id, self.identity))

"""The server (the coordinator's aggregation role): collects participations, freezes the
participant set, and sums the padded shares addressed to each clerk. It never sees an unpadded
share and never holds a mask seed in the clear."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import crypto
from .. import field as F
from ..errors import AlreadyProcessed, CryptoError, MessageError, ProtocolError, UnknownSender
from .messages import Announce, ClerkJob, Participation, open_signed, seal
from .noise_participant import noise_sign_keys
from .params import check_announce
from .participant import seed_info
from .registry import Registry
from .snapshot import bitmap_bytes, encode_bitmap, snapshot_hash

#: Rows summed at once in the snapshot; bounds memory at SUM_BATCH * n * B * 8 bytes.
SUM_BATCH = 8192


@dataclass(frozen=True)
class Snapshot:
    """The frozen participant set and what follows from it.

    participants: (|S|,) sorted registry indices; summed: (n, B) padded-share sums per clerk;
    sealed_seeds: (device_id, sealed seed) in registry order, for the recipient;
    noise_seeds: (clerk_id, sealed seed) of the noise-adding clerks in committee order (empty unless the
    announce has clerk noise). Only the devices count as participants (min/max_participants, rewards).
    """

    aggregation_id: str
    participants: np.ndarray
    bitmap: bytes
    hash: bytes
    summed: np.ndarray
    sealed_seeds: tuple[tuple[str, bytes], ...]
    noise_seeds: tuple[tuple[str, bytes], ...] = ()


class Server:
    """Collect and snapshot one aggregation. Holds no socket and no clock."""

    def __init__(self, announce: Announce, registry: Registry,
                 recipient: crypto.Identity | None = None):
        """recipient: when the coordinator is also the recipient, pass its identity so each
        sealed seed is checked on arrival; one that does not open would spoil the whole sum."""
        check_announce(announce)
        self.recipient = recipient
        if registry.snapshot_hash != announce.registry_hash or len(registry) != announce.registry_size:
            raise ProtocolError("the registry does not match the snapshot the announce names")
        self.announce = announce
        self.registry = registry
        # Noise participants (the committee, when clerks add noise) are keyed by clerk id, apart from the
        # devices: they do not count towards min/max_participants and are not in the registry bitmap.
        self._noise_keys = noise_sign_keys(announce)
        clash = sorted(c for c in self._noise_keys if registry.index_of(c) is not None)
        if clash:
            raise ProtocolError(f"committee members {clash[:5]} are also registered devices; their noise"
                                " participations could not be told from device inputs")
        self._inputs: dict[int, tuple[bytes, bytes]] = {}
        self._noise: dict[str, tuple[bytes, bytes]] = {}
        self.snapshot_taken: Snapshot | None = None

    def accept(self, raw: bytes, now: float) -> str:
        """Validate and store one participation envelope; returns the device id.

        Raises MessageError/BadSignature/UnknownSender for bad input, AlreadyProcessed for a
        duplicate (a no-op), ProtocolError when the round is closed or the deadline passed.
        """
        a = self.announce
        msg, env = open_signed(raw, Participation, self._sign_key_of)
        if msg.device_id != env.signer:
            raise UnknownSender(f"participation for {msg.device_id!r} signed by {env.signer!r}")
        if msg.aggregation_id != a.aggregation_id:
            raise ProtocolError(f"participation for {msg.aggregation_id!r}, not {a.aggregation_id!r}")
        noise = msg.device_id in self._noise_keys
        idx = self.registry.index_of(msg.device_id)
        if (msg.device_id in self._noise) if noise else (idx in self._inputs):
            raise AlreadyProcessed(f"{a.aggregation_id}: duplicate participation of {msg.device_id}")
        if self.snapshot_taken is not None:
            raise ProtocolError(f"{a.aggregation_id}: round closed, participation of {msg.device_id} ignored")
        if now > a.participation_deadline:
            raise ProtocolError(f"{a.aggregation_id}: participation of {msg.device_id} after the deadline")
        want = a.n * a.blocks * 4
        if len(msg.padded_shares) != want:
            raise MessageError(
                f"participation.padded_shares: expected {want} bytes (n={a.n}, B={a.blocks}),"
                f" got {len(msg.padded_shares)}"
            )
        try:
            F.from_uint32_bytes(msg.padded_shares, a.p)
        except ValueError as exc:
            raise MessageError(f"participation.padded_shares: {exc}") from exc
        if self.recipient is not None:
            try:
                crypto.open_from(self.recipient.exchange, msg.sealed_seed,
                                 seed_info(a.aggregation_id, msg.device_id))
            except CryptoError as exc:
                raise MessageError(f"participation of {msg.device_id}: sealed seed does not open") from exc
        if noise:
            self._noise[msg.device_id] = (msg.padded_shares, msg.sealed_seed)
            return msg.device_id
        if len(self._inputs) >= a.max_participants:
            raise ProtocolError(f"{a.aggregation_id}: already {a.max_participants} participants")
        assert idx is not None  # open_signed found its key
        self._inputs[idx] = (msg.padded_shares, msg.sealed_seed)
        return msg.device_id

    def _sign_key_of(self, party_id: str) -> bytes | None:
        return self._noise_keys.get(party_id) or self.registry.sign_key_of(party_id)

    def is_noise_participant(self, party_id: str) -> bool:
        """True for a committee member adding clerk noise to this aggregation."""
        return party_id in self._noise_keys

    def stored(self, device_id: str) -> tuple[bytes, bytes]:
        """(padded shares, sealed seed) of an accepted participation (device or noise), to persist."""
        if device_id in self._noise:
            return self._noise[device_id]
        idx = self.registry.index_of(device_id)
        if idx is None or idx not in self._inputs:
            raise KeyError(device_id)
        return self._inputs[idx]

    @property
    def participant_count(self) -> int:
        """Device participations accepted so far (noise participants not counted)."""
        return len(self._inputs)

    @property
    def noise_count(self) -> int:
        """Noise participations (clerks) accepted so far."""
        return len(self._noise)

    def restore(self, device_id: str, padded_shares: bytes, sealed_seed: bytes) -> None:
        """Re-load a participation accepted before a restart (already validated then)."""
        if device_id in self._noise_keys:
            self._noise[device_id] = (padded_shares, sealed_seed)
            return
        idx = self.registry.index_of(device_id)
        if idx is None:
            raise UnknownSender(f"cannot restore participation of unknown device {device_id!r}")
        self._inputs[idx] = (padded_shares, sealed_seed)

    def snapshot(self) -> Snapshot:
        """Freeze S and sum each clerk's padded shares over S. Idempotent once taken."""
        if self.snapshot_taken is not None:
            return self.snapshot_taken
        a = self.announce
        if len(self._inputs) < a.min_participants:
            raise ProtocolError(
                f"{a.aggregation_id}: {len(self._inputs)} participants, fewer than the"
                f" min_participants={a.min_participants}"
            )
        # Every clerk removes the pads of all n noise participants (the committee is the noise set, fixed
        # by the announce), so a snapshot leaving out anyone's noise could not be computed anyway: refuse it.
        missing = [c for c in self._noise_keys if c not in self._noise]
        if missing:
            raise ProtocolError(f"{a.aggregation_id}: clerk noise missing from {len(missing)} of {a.n} clerks:"
                                f" {missing[:5]}")
        S = np.asarray(sorted(self._inputs), np.int64)
        noise_ids = [m.clerk_id for m in a.committee if m.clerk_id in self._noise]
        width = a.n * a.blocks
        total = np.zeros(width, np.int64)
        padded = [self._inputs[int(i)][0] for i in S] + [self._noise[c][0] for c in noise_ids]
        for start in range(0, len(padded), SUM_BATCH):
            rows = np.frombuffer(b"".join(padded[start : start + SUM_BATCH]), "<u4").reshape(-1, width)
            total = np.mod(total + rows.sum(axis=0, dtype=np.int64), a.p)
        raw = bitmap_bytes(S, a.registry_size)
        self.snapshot_taken = Snapshot(
            aggregation_id=a.aggregation_id,
            participants=S,
            bitmap=encode_bitmap(S, a.registry_size),
            hash=snapshot_hash(a.digest(), raw),
            summed=total.reshape(a.n, a.blocks),
            sealed_seeds=tuple(
                (self.registry.entries[int(i)].device_id, self._inputs[int(i)][1]) for i in S
            ),
            noise_seeds=tuple((c, self._noise[c][1]) for c in noise_ids),
        )
        return self.snapshot_taken

    def jobs(self, coordinator_id: str, identity: crypto.Identity) -> list[tuple[str, bytes]]:
        """Signed clerk jobs from the snapshot: (clerk_id, envelope bytes) per committee member."""
        snap = self.snapshot()
        out = []
        for i, m in enumerate(self.announce.committee):
            job = ClerkJob(
                aggregation_id=snap.aggregation_id,
                clerk_id=m.clerk_id,
                snapshot_hash=snap.hash,
                participants=snap.bitmap,
                summed_shares=F.to_uint32_bytes(snap.summed[i]),
            )
            out.append((m.clerk_id, seal(job, coordinator_id, identity)))
        return out


def new_announce(
    *,
    aggregation_id: str,
    coordinator_id: str,
    k: int,
    t: int,
    committee: tuple,
    recipient_key: bytes,
    registry: Registry,
    dimension: int,
    scale: float,
    clip_lo: float,
    clip_hi: float,
    participation_deadline: float,
    result_deadline: float,
    min_participants: int,
    max_participants: int | None = None,
    p: int = F.P_DEFAULT,
    noise_mechanism: str = "none",
    noise_added_by: str = "none",
    noise_sigma: float = 0.0,
    noise_headroom: int = 0,
    reward_per_participant: int = 0,
    clerks_hash: bytes = bytes(32),
    round_number: int = 0,
) -> Announce:
    """Build an announce and run every parameter check on it (ParameterError if unsafe)."""
    from .messages import PROTOCOL_VERSION

    a = Announce(
        aggregation_id=aggregation_id,
        coordinator_id=coordinator_id,
        version=PROTOCOL_VERSION,
        p=p,
        k=k,
        t=t,
        dimension=dimension,
        scale=float(scale),
        clip_lo=float(clip_lo),
        clip_hi=float(clip_hi),
        committee=tuple(committee),
        recipient_key=recipient_key,
        registry_hash=registry.snapshot_hash,
        registry_size=len(registry),
        clerks_hash=clerks_hash,
        round_number=round_number,
        participation_deadline=float(participation_deadline),
        result_deadline=float(result_deadline),
        min_participants=min_participants,
        max_participants=len(registry) if max_participants is None else max_participants,
        noise_mechanism=noise_mechanism,
        noise_added_by=noise_added_by,
        noise_sigma=float(noise_sigma),
        noise_headroom=noise_headroom,
        reward_per_participant=reward_per_participant,
    )
    # Round-trip through the codec so an announce we build is one every peer can decode.
    Announce.decode(a.encode())
    check_announce(a)
    return a

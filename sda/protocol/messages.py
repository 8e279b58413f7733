"""Protocol messages (DESIGN §3) as frozen dataclasses, and their signed envelope.

Wire form: an envelope map {"signer", "payload", "sig"} whose payload is the msgpack map of one
message, tagged by "type". `Message.decode` validates every field; cross-field checks that need
the announce (dimensions, committee membership) belong to the protocol objects.
"""

from __future__ import annotations

import hashlib
from dataclasses import astuple, dataclass, fields
from typing import Any, ClassVar, TypeVar

from .. import crypto
from ..errors import MessageError
from . import codec as c

PROTOCOL_VERSION = 1
MAX_COMMITTEE = 4096
MAX_PARTICIPANTS = 2**24
MAX_DIMENSION = 2**22
#: Most blocks (field elements per clerk per participant) a job or result may carry.
MAX_BLOCKS = 2**20
#: A 32-byte seed sealed with HPKE.
SEALED_SEED_BYTES = crypto.SEED_BYTES + crypto.SEAL_OVERHEAD
_P_MAX = 2**31 - 1
_TIME_MAX = 2.0**40  # seconds since the epoch; far future, but finite

M = TypeVar("M", bound="Message")


class Message:
    """Base of the protocol messages: a dataclass with a TYPE tag and a field schema."""

    TYPE: ClassVar[str]
    SCHEMA: ClassVar[dict[str, c.Validator]]
    _REGISTRY: ClassVar[dict[str, type[Message]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        Message._REGISTRY[cls.TYPE] = cls

    def to_wire(self) -> dict[str, Any]:
        """The msgpack-ready map of this message."""
        out: dict[str, Any] = {"type": self.TYPE}
        for f in fields(self):  # type: ignore[arg-type]
            out[f.name] = _to_wire(getattr(self, f.name))
        return out

    def encode(self) -> bytes:
        """msgpack bytes of this message (the payload of an envelope)."""
        return c.pack(self.to_wire())

    @classmethod
    def from_wire(cls: type[M], obj: Any) -> M:
        """Validate a decoded map and build the message; MessageError on any problem."""
        what = cls.TYPE
        obj = c.check_keys(what, obj, ("type", *cls.SCHEMA))
        if obj["type"] != cls.TYPE:
            raise MessageError(f"expected a {cls.TYPE!r} message, got {obj['type']!r:.40}")
        values = {name: check(f"{what}.{name}", obj[name]) for name, check in cls.SCHEMA.items()}
        return cls(**values)

    @classmethod
    def decode(cls: type[M], raw: bytes) -> M:
        """Validate and build from msgpack bytes."""
        return cls.from_wire(c.unpack(raw, cls.TYPE))


def _to_wire(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_to_wire(x) for x in v]
    if hasattr(v, "__dataclass_fields__"):
        return [_to_wire(x) for x in astuple(v)]
    return v


@dataclass(frozen=True)
class CommitteeMember:
    """A clerk on an aggregation's committee: its keys and its Shamir evaluation point."""

    clerk_id: str
    sign_key: bytes
    box_key: bytes
    point: int


def _member(where: str, v: Any) -> CommitteeMember:
    if not isinstance(v, list) or len(v) != 4:
        raise MessageError(f"{where}: expected [clerk_id, sign_key, box_key, point]")
    return CommitteeMember(
        c.ident()(f"{where}.clerk_id", v[0]),
        c.blob(exact=crypto.KEY_BYTES)(f"{where}.sign_key", v[1]),
        c.blob(exact=crypto.KEY_BYTES)(f"{where}.box_key", v[2]),
        c.integer(1, _P_MAX)(f"{where}.point", v[3]),
    )


@dataclass(frozen=True)
class Announce(Message):
    """The coordinator's signed call for an aggregation (retained on agg/{id}/announce)."""

    TYPE: ClassVar[str] = "announce"
    aggregation_id: str
    coordinator_id: str
    version: int
    p: int
    k: int
    t: int
    dimension: int
    scale: float
    clip_lo: float
    clip_hi: float
    committee: tuple[CommitteeMember, ...]
    recipient_key: bytes
    registry_hash: bytes
    registry_size: int
    clerks_hash: bytes
    round_number: int
    participation_deadline: float
    result_deadline: float
    min_participants: int
    max_participants: int
    noise_mechanism: str
    noise_added_by: str
    noise_sigma: float
    noise_headroom: int
    reward_per_participant: int

    SCHEMA: ClassVar[dict[str, c.Validator]] = {
        "aggregation_id": c.ident(),
        "coordinator_id": c.ident(),
        "version": c.integer(PROTOCOL_VERSION, PROTOCOL_VERSION),
        "p": c.integer(3, _P_MAX),
        "k": c.integer(1, 2**16),
        "t": c.integer(1, 2**16),
        "dimension": c.integer(1, MAX_DIMENSION),
        "scale": c.number(1e-9, 2.0**31),
        "clip_lo": c.number(-(2.0**31), 2.0**31),
        "clip_hi": c.number(-(2.0**31), 2.0**31),
        "committee": c.array_of(_member, 1, MAX_COMMITTEE),
        "recipient_key": c.blob(exact=crypto.KEY_BYTES),
        "registry_hash": c.blob(exact=32),
        "registry_size": c.integer(1, MAX_PARTICIPANTS),
        "clerks_hash": c.blob(exact=32),
        "round_number": c.integer(0, 2**40),
        "participation_deadline": c.number(0, _TIME_MAX),
        "result_deadline": c.number(0, _TIME_MAX),
        "min_participants": c.integer(1, MAX_PARTICIPANTS),
        "max_participants": c.integer(1, MAX_PARTICIPANTS),
        "noise_mechanism": c.choice("none", "skellam", "discrete_gaussian"),
        "noise_added_by": c.choice("none", "participants", "clerks"),
        "noise_sigma": c.number(0, 2.0**31),
        "noise_headroom": c.integer(0, _P_MAX),
        "reward_per_participant": c.integer(0, 2**40),
    }

    @property
    def n(self) -> int:
        """Committee size."""
        return len(self.committee)

    @property
    def blocks(self) -> int:
        """B = ceil(d / k), the field elements each clerk gets per participant."""
        return max(1, -(-self.dimension // self.k))

    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding: what snapshots and results are bound to."""
        return hashlib.sha256(self.encode()).digest()

    def member_index(self, clerk_id: str) -> int | None:
        """Position of a clerk on the committee, or None."""
        for i, m in enumerate(self.committee):
            if m.clerk_id == clerk_id:
                return i
        return None


@dataclass(frozen=True)
class Participation(Message):
    """A device's input: padded shares for each clerk (n*B little-endian words), sealed seed."""

    TYPE: ClassVar[str] = "participation"
    aggregation_id: str
    device_id: str
    padded_shares: bytes
    sealed_seed: bytes

    SCHEMA: ClassVar[dict[str, c.Validator]] = {
        "aggregation_id": c.ident(),
        "device_id": c.ident(),
        "padded_shares": c.blob(max_len=4 * MAX_COMMITTEE * 2**12, multiple=4),
        "sealed_seed": c.blob(exact=SEALED_SEED_BYTES),
    }


@dataclass(frozen=True)
class ClerkJob(Message):
    """The server's job for one clerk: the participant set as a compressed bitmap over the
    registry, and the sum of the padded shares addressed to this clerk (B words)."""

    TYPE: ClassVar[str] = "clerk_job"
    aggregation_id: str
    clerk_id: str
    snapshot_hash: bytes
    participants: bytes
    summed_shares: bytes

    SCHEMA: ClassVar[dict[str, c.Validator]] = {
        "aggregation_id": c.ident(),
        "clerk_id": c.ident(),
        "snapshot_hash": c.blob(exact=32),
        "participants": c.blob(max_len=MAX_PARTICIPANTS // 8 + 1024),
        "summed_shares": c.blob(max_len=4 * MAX_BLOCKS, multiple=4),
    }


@dataclass(frozen=True)
class ClerkResult(Message):
    """A clerk's share of the sum (B words), HPKE-sealed to the recipient."""

    TYPE: ClassVar[str] = "clerk_result"
    aggregation_id: str
    clerk_id: str
    snapshot_hash: bytes
    sealed_share: bytes

    SCHEMA: ClassVar[dict[str, c.Validator]] = {
        "aggregation_id": c.ident(),
        "clerk_id": c.ident(),
        "snapshot_hash": c.blob(exact=32),
        "sealed_share": c.blob(max_len=4 * MAX_BLOCKS + crypto.SEAL_OVERHEAD),
    }


# --- envelope -----------------------------------------------------------------------------

_ENVELOPE_KEYS = ("signer", "payload", "sig")


@dataclass(frozen=True)
class Envelope:
    """A payload, who signed it, and the Ed25519 signature binding the two."""

    signer: str
    payload: bytes
    signature: bytes

    def encode(self) -> bytes:
        """msgpack bytes of the envelope."""
        return c.pack({"signer": self.signer, "payload": self.payload, "sig": self.signature})

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        """Parse (not verify) an envelope from untrusted bytes."""
        obj = c.check_keys("envelope", c.unpack(raw, "envelope"), _ENVELOPE_KEYS)
        return cls(
            c.ident()("envelope.signer", obj["signer"]),
            c.blob(max_len=c.MAX_MESSAGE_BYTES)("envelope.payload", obj["payload"]),
            c.blob(exact=crypto.SIGNATURE_BYTES)("envelope.sig", obj["sig"]),
        )

    def verify(self, public_key: bytes) -> None:
        """Raise BadSignature unless signed by the holder of public_key as self.signer."""
        crypto.verify(public_key, self.signer, self.payload, self.signature)

    def message_type(self) -> str:
        """The payload's "type" tag, read without trusting the rest."""
        obj = c.unpack(self.payload, "payload")
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise MessageError("payload: expected a map with a string 'type'")
        return obj["type"]


def seal(message: Message, signer: str, identity: crypto.Identity) -> bytes:
    """Sign a message as `signer` and return the envelope's bytes."""
    payload = message.encode()
    return Envelope(signer, payload, crypto.sign(identity.signing, signer, payload)).encode()


def open_signed(raw: bytes, kind: type[M], public_key_of: Any) -> tuple[M, Envelope]:
    """Decode an envelope, look up the signer's key, verify, and decode the payload as `kind`.

    public_key_of: callable signer_id -> Ed25519 public key bytes, or None if unknown.
    Raises MessageError, UnknownSender or BadSignature.
    """
    from ..errors import UnknownSender

    env = Envelope.decode(raw)
    key = public_key_of(env.signer)
    if key is None:
        raise UnknownSender(f"{kind.TYPE} signed by unknown party {env.signer!r}")
    env.verify(key)
    return kind.decode(env.payload), env


@dataclass(frozen=True)
class Registration(Message):
    """A party's public keys, signed with its own Ed25519 key (retained on registry/{party}).

    The broker's ACL lets only the authenticated `party_id` write that topic, which is what
    binds the keys to the provisioned identity.
    """

    TYPE: ClassVar[str] = "registration"
    party_id: str
    role: str
    sign_key: bytes
    box_key: bytes

    SCHEMA: ClassVar[dict[str, c.Validator]] = {
        "party_id": c.ident(),
        "role": c.choice("device", "clerk"),
        "sign_key": c.blob(exact=crypto.KEY_BYTES),
        "box_key": c.blob(exact=crypto.KEY_BYTES),
    }


def _entry(where: str, v: Any) -> tuple[str, bytes, bytes]:
    if not isinstance(v, list) or len(v) != 3:
        raise MessageError(f"{where}: expected [device_id, sign_key, box_key]")
    return (
        c.ident()(f"{where}.device_id", v[0]),
        c.blob(exact=crypto.KEY_BYTES)(f"{where}.sign_key", v[1]),
        c.blob(exact=crypto.KEY_BYTES)(f"{where}.box_key", v[2]),
    )


#: Registry entries per snapshot page: ~100 KB, one MQTT packet, retainable.
REGISTRY_PAGE = 1000


@dataclass(frozen=True)
class RegistrySnapshot(Message):
    """One page of the coordinator's ordered device registry (participant bitmaps index into it).

    Page `page` of `pages` holds entries [page * REGISTRY_PAGE, ...) of a registry of
    `registry_size` devices whose hash is `registry_hash`.
    """

    TYPE: ClassVar[str] = "registry_snapshot"
    coordinator_id: str
    registry_hash: bytes
    registry_size: int
    page: int
    pages: int
    entries: tuple[tuple[str, bytes, bytes], ...]

    SCHEMA: ClassVar[dict[str, c.Validator]] = {
        "coordinator_id": c.ident(),
        "registry_hash": c.blob(exact=32),
        "registry_size": c.integer(1, MAX_PARTICIPANTS),
        "page": c.integer(0, MAX_PARTICIPANTS // REGISTRY_PAGE),
        "pages": c.integer(1, MAX_PARTICIPANTS // REGISTRY_PAGE + 1),
        "entries": c.array_of(_entry, 1, REGISTRY_PAGE),
    }


def _candidate(where: str, v: Any) -> tuple[str, bytes, bytes, int, bool]:
    if not isinstance(v, list) or len(v) != 5:
        raise MessageError(f"{where}: expected [clerk_id, sign_key, box_key, stake, eligible]")
    if not isinstance(v[4], bool):
        raise MessageError(f"{where}.eligible: expected a bool")
    return (
        c.ident()(f"{where}.clerk_id", v[0]),
        c.blob(exact=crypto.KEY_BYTES)(f"{where}.sign_key", v[1]),
        c.blob(exact=crypto.KEY_BYTES)(f"{where}.box_key", v[2]),
        c.integer(0, 2**62)(f"{where}.stake", v[3]),
        v[4],
    )


@dataclass(frozen=True)
class ClerkSnapshot(Message):
    """One page of the clerk snapshot a committee is drawn from (sda.committee): every registered
    clerk with its stake and eligibility, in clerk_id order, hashed as `clerks_hash`."""

    TYPE: ClassVar[str] = "clerk_snapshot"
    coordinator_id: str
    clerks_hash: bytes
    count: int
    page: int
    pages: int
    entries: tuple[tuple[str, bytes, bytes, int, bool], ...]

    SCHEMA: ClassVar[dict[str, c.Validator]] = {
        "coordinator_id": c.ident(),
        "clerks_hash": c.blob(exact=32),
        "count": c.integer(1, MAX_PARTICIPANTS),
        "page": c.integer(0, MAX_PARTICIPANTS // REGISTRY_PAGE),
        "pages": c.integer(1, MAX_PARTICIPANTS // REGISTRY_PAGE + 1),
        "entries": c.array_of(_candidate, 1, REGISTRY_PAGE),
    }

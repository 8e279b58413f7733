"""Tests of sda/protocol/codec.py and messages.py: the strict wire format and the signed envelope.

Every decoder takes untrusted bytes, so each test feeds it something that is not exactly a
well-formed message and checks that the only thing that comes out is MessageError.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_fixtures import COORDINATOR, identity, make_world

from sda import crypto
from sda.errors import BadSignature, MessageError, SdaError, UnknownSender
from sda.protocol import codec
from sda.protocol.messages import (
    MAX_COMMITTEE,
    SEALED_SEED_BYTES,
    Announce,
    ClerkJob,
    ClerkResult,
    Envelope,
    Message,
    Participation,
    open_signed,
    seal,
)

FAST = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])

MESSAGE_TYPES = (Announce, Participation, ClerkJob, ClerkResult)


@functools.lru_cache(maxsize=1)
def samples() -> dict[str, Message]:
    """One valid message of each type, with realistic sizes (n = 10 clerks, B = 2)."""
    w = make_world()
    a = w.announce
    B = a.blocks
    return {
        "announce": a,
        "participation": Participation("agg-1", "device-3", os.urandom(4 * a.n * B),
                                       os.urandom(SEALED_SEED_BYTES)),
        "clerk_job": ClerkJob("agg-1", "clerk-2", os.urandom(32), os.urandom(13), os.urandom(4 * B)),
        "clerk_result": ClerkResult("agg-1", "clerk-2", os.urandom(32),
                                    os.urandom(4 * B + crypto.SEAL_OVERHEAD)),
    }


def sample(cls: type[Message]) -> Message:
    return samples()[cls.TYPE]


def envelope_sample() -> bytes:
    return seal(sample(Participation), "device-3", identity("device-3"))


def wire_of(cls: type[Message]) -> dict:
    return sample(cls).to_wire()


def decode_wire(cls: type[Message], wire: object) -> Message:
    return cls.decode(msgpack.packb(wire, use_bin_type=True))


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
def test_round_trip_each_message(cls):
    m = sample(cls)
    raw = m.encode()
    back = cls.decode(raw)
    assert back == m
    assert type(back) is cls
    assert back.encode() == raw  # canonical: re-encoding gives the same bytes


def test_announce_round_trip_keeps_committee_and_derived_values():
    a = sample(Announce)
    back = Announce.decode(a.encode())
    assert back.committee == a.committee
    assert back.n == 10 and back.blocks == 2  # d = 7, k = 5
    assert back.digest() == a.digest()
    assert back.member_index("clerk-3") == 3
    assert back.member_index("clerk-99") is None


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
def test_round_trip_through_signed_envelope(cls):
    m = sample(cls)
    raw = seal(m, "signer-1", identity("signer-1"))
    env = Envelope.decode(raw)
    assert env.signer == "signer-1"
    assert env.payload == m.encode()
    assert len(env.signature) == crypto.SIGNATURE_BYTES
    assert env.encode() == raw
    assert env.message_type() == cls.TYPE
    got, env2 = open_signed(raw, cls, {"signer-1": identity("signer-1").public().sign_key}.get)
    assert got == m
    assert env2 == env


def test_announce_digest_depends_on_every_field():
    a = sample(Announce)
    changed = [
        Announce.from_wire({**a.to_wire(), "min_participants": a.min_participants + 1}),
        Announce.from_wire({**a.to_wire(), "scale": a.scale * 2}),
        Announce.from_wire({**a.to_wire(), "aggregation_id": "agg-2"}),
    ]
    digests = {a.digest(), *(b.digest() for b in changed)}
    assert len(digests) == 4


ids_strategy = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)


@FAST
@given(agg=ids_strategy, dev=ids_strategy, words=st.integers(0, 64),
       data=st.data())
def test_participation_round_trip_hypothesis(agg, dev, words, data):
    padded = data.draw(st.binary(min_size=4 * words, max_size=4 * words))
    seed = data.draw(st.binary(min_size=SEALED_SEED_BYTES, max_size=SEALED_SEED_BYTES))
    m = Participation(agg, dev, padded, seed)
    assert Participation.decode(m.encode()) == m


@FAST
@given(agg=ids_strategy, clerk=ids_strategy, snap=st.binary(min_size=32, max_size=32),
       bitmap=st.binary(max_size=100), words=st.integers(0, 32),
       sealed=st.binary(max_size=200), data=st.data())
def test_job_and_result_round_trip_hypothesis(agg, clerk, snap, bitmap, words, sealed, data):
    summed = data.draw(st.binary(min_size=4 * words, max_size=4 * words))
    job = ClerkJob(agg, clerk, snap, bitmap, summed)
    res = ClerkResult(agg, clerk, snap, sealed)
    assert ClerkJob.decode(job.encode()) == job
    assert ClerkResult.decode(res.encode()) == res


@FAST
@given(signer=ids_strategy, payload=st.binary(max_size=300),
       sig=st.binary(min_size=64, max_size=64))
def test_envelope_round_trip_hypothesis(signer, payload, sig):
    env = Envelope(signer, payload, sig)
    assert Envelope.decode(env.encode()) == env


def test_id_of_64_chars_is_accepted():
    wire = wire_of(Participation)
    wire["device_id"] = "d" * 64
    assert decode_wire(Participation, wire).device_id == "d" * 64


# --- truncated and trailing bytes ----------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
def test_every_truncation_is_refused(cls):
    raw = sample(cls).encode()
    for cut in range(len(raw)):
        with pytest.raises(MessageError):
            cls.decode(raw[:cut])


def test_every_truncation_of_an_envelope_is_refused():
    raw = envelope_sample()
    for cut in range(len(raw)):
        with pytest.raises(MessageError):
            Envelope.decode(raw[:cut])


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
@pytest.mark.parametrize("extra", [b"\x00", b"\xc0", b"\x90", b"\xff" * 7], ids=repr)
def test_trailing_bytes_are_refused(cls, extra):
    with pytest.raises(MessageError):
        cls.decode(sample(cls).encode() + extra)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
def test_two_concatenated_messages_are_refused(cls):
    raw = sample(cls).encode()
    with pytest.raises(MessageError):
        cls.decode(raw + raw)


def test_trailing_bytes_after_envelope_are_refused():
    raw = envelope_sample()
    for extra in (b"\x00", raw):
        with pytest.raises(MessageError):
            Envelope.decode(raw + extra)


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
def test_an_extra_key_is_refused(cls):
    for extra_key, value in (("extra", 1), ("Type", "x"), ("", None)):
        wire = {**wire_of(cls), extra_key: value}
        with pytest.raises(MessageError, match="unexpected"):
            decode_wire(cls, wire)


def _missing_key_cases():
    return [(cls, key) for cls in MESSAGE_TYPES for key in ("type", *cls.SCHEMA)]


@pytest.mark.parametrize("cls,key", _missing_key_cases(), ids=lambda v: getattr(v, "TYPE", v))
def test_a_missing_key_is_refused(cls, key):
    wire = wire_of(cls)
    del wire[key]
    with pytest.raises(MessageError, match="missing"):
        decode_wire(cls, wire)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
def test_a_key_in_binary_form_is_refused(cls):
    wire = wire_of(cls)
    wire[b"type"] = wire.pop("type")
    with pytest.raises(MessageError):
        decode_wire(cls, wire)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
def test_an_integer_key_is_refused(cls):
    # msgpack itself can carry int keys; strict_map_key refuses them.
    raw = msgpack.packb({**wire_of(cls), 7: 1}, use_bin_type=True)
    with pytest.raises(MessageError):
        cls.decode(raw)


def test_envelope_extra_or_missing_key_is_refused():
    obj = msgpack.unpackb(envelope_sample(), raw=False)
    with pytest.raises(MessageError):
        Envelope.decode(msgpack.packb({**obj, "extra": 0}, use_bin_type=True))
    for key in obj:
        partial = {k: v for k, v in obj.items() if k != key}
        with pytest.raises(MessageError):
            Envelope.decode(msgpack.packb(partial, use_bin_type=True))


def _with_duplicate_key(wire: dict, key: str, value: object) -> bytes:
    """A msgpack map holding `key` twice: first `value`, then the real value."""
    items = list(wire.items())
    body = b"".join(msgpack.packb(k, use_bin_type=True) + msgpack.packb(v, use_bin_type=True)
                    for k, v in items)
    dup = msgpack.packb(key, use_bin_type=True) + msgpack.packb(value, use_bin_type=True)
    n = len(items) + 1
    assert n < 16
    return bytes([0x80 | n]) + dup + body


def test_a_duplicated_key_is_refused():
    """A map naming a field twice is not one well-formed message: two decoders (first value
    wins / last value wins) would read two different messages under one signature."""
    wire = wire_of(Participation)
    raw = _with_duplicate_key(wire, "device_id", "device-9")
    with pytest.raises(MessageError):
        Participation.decode(raw)


# --- the "type" tag ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
def test_wrong_type_tag_is_refused(cls):
    for tag in [other.TYPE for other in MESSAGE_TYPES if other is not cls] + ["", "ANNOUNCE", 1,
                                                                               None, b"announce"]:
        wire = {**wire_of(cls), "type": tag}
        with pytest.raises(MessageError):
            decode_wire(cls, wire)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
def test_another_message_is_not_decoded_as_this_one(cls):
    for other in MESSAGE_TYPES:
        if other is not cls:
            with pytest.raises(MessageError):
                cls.decode(sample(other).encode())


# --- wrong-typed fields --------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")

KINDS = {
    Announce: {
        "aggregation_id": "ident", "coordinator_id": "ident", "version": "int", "p": "int",
        "k": "int", "t": "int", "dimension": "int", "scale": "num", "clip_lo": "num",
        "clip_hi": "num", "committee": "committee", "recipient_key": "key32",
        "registry_hash": "key32", "registry_size": "int", "clerks_hash": "key32", "round_number": "int",
        "participation_deadline": "num",
        "result_deadline": "num", "min_participants": "int", "max_participants": "int",
        "noise_mechanism": "choice", "noise_added_by": "choice", "noise_sigma": "num",
        "noise_headroom": "int", "reward_per_participant": "int",
    },
    Participation: {"aggregation_id": "ident", "device_id": "ident", "padded_shares": "words",
                    "sealed_seed": "sealed_seed"},
    ClerkJob: {"aggregation_id": "ident", "clerk_id": "ident", "snapshot_hash": "key32",
               "participants": "blob", "summed_shares": "words"},
    ClerkResult: {"aggregation_id": "ident", "clerk_id": "ident", "snapshot_hash": "key32",
                  "sealed_share": "blob"},
}

BAD_IDS = ["", "a/b", "a+b", "a#b", "x" * 65, "-a", ".a", "_a", "a b", "a\n", "\u00e9t\u00e9",
           "a\x00", "+", "#", "/"]

BAD = {
    "ident": [None, True, 1, 1.0, b"agg-1", ["agg-1"], {"a": "b"}, *BAD_IDS],
    "int": [None, "1", b"\x01", True, False, 1.0, NAN, INF, -INF, [1], {"a": 1}, -1, 2**64 - 1],
    "num": [None, "1.0", b"\x01", True, False, NAN, INF, -INF, [1.0], {"a": 1.0}, 2.0**41,
            -(2.0**41), 2**41],
    "key32": [None, "k" * 32, 32, True, [b"k" * 32], {"k": b"k"}, b"", b"k" * 31, b"k" * 33],
    "sealed_seed": [None, "s" * SEALED_SEED_BYTES, 1, True, [b""], b"",
                    b"s" * (SEALED_SEED_BYTES - 1), b"s" * (SEALED_SEED_BYTES + 1)],
    "words": [None, "abcd", 4, True, [b"abcd"], {"a": b"abcd"}, 1.0, b"w", b"ww", b"www",
              b"w" * 41],
    "blob": [None, "x", 1, True, 1.0, [b"x"], {"x": b"x"}],
    "choice": [None, 1, True, 0.0, "other", "None", "NONE", "none ", b"none", ["none"],
               {"none": 1}],
}


def _committee_bad_values() -> list:
    member = list(wire_of(Announce)["committee"][0])
    cid, sk, bk, pt = member
    return [
        None, {}, {"a": 1}, "clerk-0", 1, True, b"x",
        [],  # an empty committee
        [member[:3]], [[*member, 1]], [{"clerk_id": cid}], [tuple(member)[:2]],
        [[cid, sk[:31], bk, pt]], [[cid, sk + b"\x00", bk, pt]],
        [[cid, sk, bk[:31], pt]], [[cid, sk, bk + b"\x00", pt]],
        [[cid, sk.hex(), bk, pt]], [[cid, sk, None, pt]],
        [[cid, sk, bk, 0]], [[cid, sk, bk, -1]], [[cid, sk, bk, 2**31]], [[cid, sk, bk, "1"]],
        [[cid, sk, bk, True]], [[cid, sk, bk, 1.0]], [[cid, sk, bk, NAN]],
        [["a/b", sk, bk, pt]], [["", sk, bk, pt]], [[1, sk, bk, pt]],
        [member] * (MAX_COMMITTEE + 1),
    ]


def _wrong_value_cases():
    cases = []
    for cls, kinds in KINDS.items():
        for name, kind in kinds.items():
            values = _committee_bad_values if kind == "committee" else BAD[kind]
            cases.append((cls, name, kind, values))
    return cases


def test_kinds_table_covers_every_schema_field():
    for cls in MESSAGE_TYPES:
        assert set(KINDS[cls]) == set(cls.SCHEMA), cls.TYPE


@pytest.mark.parametrize(
    "cls,name,kind,values", _wrong_value_cases(),
    ids=[f"{c.TYPE}.{n}" for c, n, _, _ in _wrong_value_cases()],
)
def test_each_field_with_a_wrong_value_is_refused(cls, name, kind, values):
    if callable(values):
        values = values()
    for bad in values:
        wire = {**wire_of(cls), name: bad}
        with pytest.raises(MessageError):
            decode_wire(cls, wire)


def test_error_names_the_message_and_field():
    wire = {**wire_of(Announce), "k": "5"}
    with pytest.raises(MessageError, match=r"announce\.k"):
        decode_wire(Announce, wire)
    wire = {**wire_of(Participation), "sealed_seed": b"x"}
    with pytest.raises(MessageError, match=r"participation\.sealed_seed.*80"):
        decode_wire(Participation, wire)


def test_oversized_byte_fields_are_refused():
    for cls, name, size in (
        (ClerkJob, "summed_shares", 4 * 2**20 + 4),
        (ClerkJob, "participants", 2**24 // 8 + 1025),
        (ClerkResult, "sealed_share", 4 * 2**20 + crypto.SEAL_OVERHEAD + 1),
    ):
        wire = {**wire_of(cls), name: bytes(size)}
        with pytest.raises(MessageError, match="at most"):
            decode_wire(cls, wire)


def test_a_message_over_the_size_limit_is_refused_before_parsing():
    raw = b"\x00" * (codec.MAX_MESSAGE_BYTES + 1)
    with pytest.raises(MessageError, match="limit"):
        Participation.decode(raw)
    with pytest.raises(MessageError, match="limit"):
        Envelope.decode(raw)


@pytest.mark.parametrize("bad", [*BAD_IDS, None, 1, b"signer"], ids=repr)
def test_envelope_signer_must_be_an_id(bad):
    env = {"signer": bad, "payload": b"p", "sig": bytes(64)}
    with pytest.raises(MessageError):
        Envelope.decode(msgpack.packb(env, use_bin_type=True))


@pytest.mark.parametrize("field,bad", [
    ("payload", None), ("payload", "text"), ("payload", 1), ("payload", [b"p"]),
    ("sig", bytes(63)), ("sig", bytes(65)), ("sig", b""), ("sig", "s" * 64), ("sig", None),
    ("sig", [bytes(64)]),
], ids=repr)
def test_envelope_payload_and_signature_types(field, bad):
    env = {"signer": "s", "payload": b"p", "sig": bytes(64), field: bad}
    with pytest.raises(MessageError):
        Envelope.decode(msgpack.packb(env, use_bin_type=True))


def test_envelope_must_be_a_map():
    for obj in ([b"p", "s", bytes(64)], "envelope", 1, None, b""):
        with pytest.raises(MessageError):
            Envelope.decode(msgpack.packb(obj, use_bin_type=True))


def test_non_bytes_input_is_refused():
    for obj in ("text", None, 12, [b"x"]):
        with pytest.raises(MessageError):
            Participation.decode(obj)  # type: ignore[arg-type]
        with pytest.raises(MessageError):
            Envelope.decode(obj)  # type: ignore[arg-type]


def test_bytearray_and_memoryview_inputs_are_accepted():
    raw = sample(ClerkResult).encode()
    assert ClerkResult.decode(bytearray(raw)) == sample(ClerkResult)
    assert ClerkResult.decode(memoryview(raw)) == sample(ClerkResult)


def test_message_must_be_a_map():
    for obj in ([1, 2], "participation", 3, None, b"x", 1.5):
        with pytest.raises(MessageError, match="expected a map"):
            Participation.decode(msgpack.packb(obj, use_bin_type=True))


def test_deep_nesting_is_refused():
    with pytest.raises(MessageError):
        Participation.decode(b"\x91" * 100_000 + b"\x00")
    with pytest.raises(MessageError):
        Envelope.decode(b"\x81\xa1a" * 50_000 + b"\x00")


def test_a_length_prefix_beyond_the_input_is_refused():
    # bin32 claiming 4 GiB, str32, array32 and map32 claiming 2^32-1 items
    for raw in (b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xffabc", b"\xdd\xff\xff\xff\xff",
                b"\xdf\xff\xff\xff\xff"):
        with pytest.raises(MessageError):
            Participation.decode(raw)


def test_invalid_utf8_is_refused():
    # fixmap of one entry whose key is a fixstr with invalid UTF-8
    with pytest.raises(MessageError):
        Participation.decode(b"\x81\xa2\xff\xfe\x01")


# --- msgpack ext types ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.TYPE)
def test_ext_types_are_refused(cls):
    name = next(iter(cls.SCHEMA))
    for ext in (msgpack.ExtType(1, b"x"), msgpack.ExtType(127, b""),
                msgpack.Timestamp(1, 0)):
        with pytest.raises(MessageError):
            decode_wire(cls, {**wire_of(cls), name: ext})
        with pytest.raises(MessageError):
            decode_wire(cls, ext)
    # an ext nested inside the committee of an announce
    if cls is Announce:
        wire = wire_of(Announce)
        wire["committee"][0][3] = msgpack.ExtType(5, b"\x01")
        with pytest.raises(MessageError):
            decode_wire(Announce, wire)


def test_ext_type_in_envelope_is_refused():
    env = {"signer": "s", "payload": msgpack.ExtType(1, b"p"), "sig": bytes(64)}
    with pytest.raises(MessageError, match="ext"):
        Envelope.decode(msgpack.packb(env, use_bin_type=True))


def test_ext_type_in_a_payload_is_refused_by_message_type():
    env = Envelope("s", msgpack.packb(msgpack.ExtType(3, b"t")), bytes(64))
    with pytest.raises(MessageError):
        env.message_type()


def test_message_type_needs_a_map_with_a_string_tag():
    for payload in ([1], {"type": 1}, {"x": 1}, "announce"):
        env = Envelope("s", msgpack.packb(payload, use_bin_type=True), bytes(64))
        with pytest.raises(MessageError):
            env.message_type()


# --- fuzzing -------------------------------------------------------------------------------

DECODERS = [*(c.decode for c in MESSAGE_TYPES), Envelope.decode]


@settings(deadline=None, max_examples=300)
@given(raw=st.binary(max_size=400))
def test_random_bytes_only_raise_message_error(raw):
    for decode in DECODERS:
        with contextlib.suppress(MessageError):
            decode(raw)
    with contextlib.suppress(SdaError):
        open_signed(raw, Participation, lambda s: identity("device-3").public().sign_key)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=70) | st.binary(max_size=90),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)


@settings(deadline=None, max_examples=200)
@given(cls=st.sampled_from(MESSAGE_TYPES), data=st.data())
def test_one_field_replaced_by_any_value_decodes_or_raises_message_error(cls, data):
    wire = wire_of(cls)
    name = data.draw(st.sampled_from(sorted(wire)))
    value = data.draw(msgpack_values)
    wire[name] = value
    try:
        m = decode_wire(cls, wire)
    except MessageError:
        return
    # Whatever was accepted is a message that round-trips exactly.
    assert cls.decode(m.encode()) == m


@settings(deadline=None, max_examples=200)
@given(cls=st.sampled_from(MESSAGE_TYPES), data=st.data())
def test_single_byte_corruptions_decode_or_raise_message_error(cls, data):
    raw = bytearray(sample(cls).encode())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    try:
        m = cls.decode(bytes(raw))
    except MessageError:
        return
    assert cls.decode(m.encode()) == m


@settings(deadline=None, max_examples=100)
@given(cls=st.sampled_from(MESSAGE_TYPES), data=st.data())
def test_hypothesis_cut_is_refused(cls, data):
    raw = sample(cls).encode()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(MessageError):
        cls.decode(raw[:cut])


@settings(deadline=None, max_examples=100)
@given(obj=msgpack_values)
def test_arbitrary_msgpack_objects_are_refused(obj):
    raw = msgpack.packb(obj, use_bin_type=True)
    for decode in DECODERS:
        with pytest.raises(MessageError):
            decode(raw)


# --- signatures ----------------------------------------------------------------------------


def keys_of(*names: str):
    table = {n: identity(n).public().sign_key for n in names}
    return table.get


def test_envelope_signed_by_another_key_is_refused():
    payload = sample(ClerkResult).encode()
    forged = Envelope("alice", payload,
                      crypto.sign(identity("bob").signing, "alice", payload)).encode()
    with pytest.raises(BadSignature):
        open_signed(forged, ClerkResult, keys_of("alice", "bob"))


def test_payload_modified_after_signing_is_refused():
    raw = seal(sample(ClerkResult), "alice", identity("alice"))
    env = Envelope.decode(raw)
    # another valid message under the old signature
    other = ClerkResult(**{**sample(ClerkResult).__dict__, "clerk_id": "clerk-3"}).encode()
    for payload in (other, env.payload + b"\x00", env.payload[:-1],
                    bytes([env.payload[0] ^ 1]) + env.payload[1:]):
        tampered = Envelope(env.signer, payload, env.signature).encode()
        with pytest.raises(BadSignature):
            open_signed(tampered, ClerkResult, keys_of("alice"))


def test_signer_field_changed_is_refused():
    raw = seal(sample(ClerkResult), "alice", identity("alice"))
    env = Envelope.decode(raw)
    moved = Envelope("bob", env.payload, env.signature).encode()
    with pytest.raises(BadSignature):
        open_signed(moved, ClerkResult, keys_of("alice", "bob"))


def test_signature_is_bound_to_the_signer_id_even_under_one_key():
    """Two ids with the same key: a signature made as one is not valid as the other."""
    raw = seal(sample(ClerkResult), "alice", identity("alice"))
    env = Envelope.decode(raw)
    moved = Envelope("alice2", env.payload, env.signature).encode()
    same_key = lambda s: identity("alice").public().sign_key  # noqa: E731
    open_signed(raw, ClerkResult, same_key)  # the original verifies
    with pytest.raises(BadSignature):
        open_signed(moved, ClerkResult, same_key)


def test_unknown_signer_is_refused():
    raw = seal(sample(ClerkResult), "carol", identity("carol"))
    with pytest.raises(UnknownSender, match="carol"):
        open_signed(raw, ClerkResult, keys_of("alice", "bob"))


def test_zero_signature_is_refused():
    raw = seal(sample(ClerkResult), "alice", identity("alice"))
    env = Envelope.decode(raw)
    with pytest.raises(BadSignature):
        open_signed(Envelope("alice", env.payload, bytes(64)).encode(), ClerkResult,
                    keys_of("alice"))


def test_valid_signature_on_a_bad_payload_raises_message_error():
    payload = msgpack.packb({"type": "clerk_result"}, use_bin_type=True)
    raw = Envelope("alice", payload, crypto.sign(identity("alice").signing, "alice",
                                                 payload)).encode()
    with pytest.raises(MessageError):
        open_signed(raw, ClerkResult, keys_of("alice"))


def test_valid_envelope_of_another_type_raises_message_error():
    raw = seal(sample(ClerkJob), COORDINATOR, identity(COORDINATOR))
    with pytest.raises(MessageError):
        open_signed(raw, ClerkResult, keys_of(COORDINATOR))


@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_any_flipped_bit_of_payload_or_signature_is_refused(data):
    raw = seal(sample(ClerkResult), "alice", identity("alice"))
    env = Envelope.decode(raw)
    which = data.draw(st.sampled_from(["payload", "signature"]))
    blob = bytearray(getattr(env, which))
    bit = data.draw(st.integers(0, 8 * len(blob) - 1))
    blob[bit // 8] ^= 1 << (bit % 8)
    fields = {"signer": env.signer, "payload": env.payload, "signature": env.signature,
              which: bytes(blob)}
    with pytest.raises(BadSignature):
        open_signed(Envelope(**fields).encode(), ClerkResult, keys_of("alice"))


# --- codec validators ----------------------------------------------------------------------


def test_validators_directly():
    assert codec.integer(0, 10)("w", 10) == 10
    assert codec.number(0, 1)("w", 1) == 1.0 and isinstance(codec.number(0, 1)("w", 1), float)
    assert codec.array_of(codec.integer(0, 9), 0, 3)("w", [1, 2]) == (1, 2)
    assert codec.choice("a", "b")("w", "b") == "b"
    assert codec.blob(exact=2)("w", b"ab") == b"ab"
    bad = [
        (codec.integer(0, 10), 11), (codec.integer(0, 10), True), (codec.number(0, 1), 1.5),
        (codec.number(0, 1), math.nan), (codec.array_of(codec.integer(0, 9), 0, 3), [1, 2, 3, 4]),
        (codec.array_of(codec.integer(0, 9), 0, 3), (1,)), (codec.array_of(codec.integer(0, 9),
                                                                            0, 3), [10]),
        (codec.choice("a"), ["a"]), (codec.blob(max_len=2), b"abc"),
        (codec.blob(multiple=3), b"ab"), (codec.ident(), "x" * 65),
    ]
    for check, value in bad:
        with pytest.raises(MessageError):
            check("where", value)


def test_pack_is_strict_bin_and_str():
    raw = codec.pack({"a": b"\x00", "b": "x"})
    assert codec.unpack(raw, "t") == {"a": b"\x00", "b": "x"}

"""Fuzzing of every decoder of outside input: each either returns a valid object or raises its package's typed
error (named precisely per decoder; a ValueError, KeyError, struct.error... leaking out is a finding).

Covered elsewhere, not repeated here: random bytes, one field replaced, one byte corrupted and cuts of Announce,
Participation, ClerkJob, ClerkResult and Envelope (tests/test_messages.py), random bytes as a participant bitmap
(tests/test_protocol.py), valid chunked frames in any order (tests/test_transport.py).

Every test counts the inputs it tried (`tried`) and checks it tried at least its quota; the per-decoder counts
and their total are written to the terminal when the module ends (no `-s` needed). Hypothesis runs derandomized
without a database, so a CI run tries the same inputs every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import struct
import wave
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from assistant import control
from assistant.analytics.commands import parse_day as analytics_parse_day
from assistant.audio import read_audio
from assistant.config import Config, ConfigError, parse_config
from assistant.errors import AssistantError, AudioError, ModelError
from assistant.kws.backbone import sha256_file
from assistant.kws.head import Head
from assistant.kws.model import load_model
from assistant.learning.device import read_coordinator_key
from assistant.learning.errors import LearningError
from assistant.learning.fedadam import load_state
from assistant.learning.install import STATE_FILE, ModelVersions
from assistant.learning.release import Release, ReleaseError, head_size, verify_release
from assistant.learning.validation import Metrics, ValidationSet
from assistant.learning.verifier import Verifier
from sda import crypto
from sda.errors import (
    BadSignature,
    CryptoError,
    DecryptionFailed,
    MessageError,
    SdaError,
    TransportError,
    UnknownSender,
)
from sda.ledger import LedgerError, Receipt, verify_receipt
from sda.mqtt import topics
from sda.mqtt.broker import _GuardedReader, _peek_connect
from sda.mqtt.framing import Reassembler, frame, unframe
from sda.mqtt.transport import BrokerConfig
from sda.protocol import codec
from sda.protocol.messages import (
    ClerkSnapshot,
    Envelope,
    Registration,
    RegistrySnapshot,
    open_signed,
    seal,
)
from sda.protocol.snapshot import decode_bitmap, encode_bitmap
from sda.services.keys import Credentials
from sda.services.ledger_api import LedgerRequest, LedgerResponse
from sda.services.report import parse_day as report_parse_day

# --- counting and settings ------------------------------------------------------------------------------------------

#: Inputs tried per decoder in this run.
COUNTS: Counter[str] = Counter()


def tried(name: str) -> None:
    COUNTS[name] += 1


def fuzz(n: int):
    """Hypothesis settings of one fuzz test: n inputs, reproducible, no deadline (the machine is shared)."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


def run(inner, *names: str, quota: int) -> None:
    """Run the hypothesis test `inner`, then check the decoders it feeds got at least `quota` inputs in all."""
    before = sum(COUNTS[n] for n in names)
    inner()
    got = sum(COUNTS[n] for n in names) - before
    assert got >= quota, f"{', '.join(names)}: only {got} inputs tried, wanted {quota}"


@pytest.fixture(scope="module", autouse=True)
def _inputs_report(request):
    yield
    lines = [f"fuzz inputs tried: {name} {n}" for name, n in sorted(COUNTS.items())]
    lines.append(f"fuzz inputs tried in total: {sum(COUNTS.values())} over {len(COUNTS)} decoders")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


# --- shared strategies ---------------------------------------------------------------------------------------------

#: What msgpack can carry (its whole int range, non-finite floats, text, bytes, nesting); JSON's values below.
leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.integers(-300, 300) | st.floats()
          | st.text(max_size=40) | st.binary(max_size=40))
msgpack_values = st.recursive(
    leaves, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5),
    max_leaves=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=10)

#: Values that sit on the edges of 1, 2 and 4 byte header fields.
_EDGES = (0, 1, 2, 7, 8, 15, 16, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 16000, 44100,
          0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


@st.composite
def mutated(draw, raw: bytes, max_ops: int = 4) -> bytes:
    """`raw` after 1..max_ops byte edits: set, insert, delete, cut, append, or an edge value written over 1-4 bytes."""
    b = bytearray(raw)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(("set", "insert", "delete", "cut", "append", "edge")))
        pos = draw(st.integers(0, len(b)))
        if op == "set" and b:
            b[min(pos, len(b) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del b[pos : pos + draw(st.integers(1, 8))]
        elif op == "cut":
            del b[pos:]
        elif op == "append":
            b += draw(st.binary(min_size=1, max_size=16))
        elif op == "edge":
            fmt = draw(st.sampled_from(("<B", "<H", "<I", ">H", ">I")))
            value = draw(st.sampled_from(_EDGES)) % (1 << (8 * struct.calcsize(fmt)))
            packed = struct.pack(fmt, value)
            b[pos : pos + len(packed)] = packed
    return bytes(b)


#: A kilobyte of YAML aliases that reads as a list of 9**9 items: its repr in the error message never ended.
ALIAS_BOMB = "x:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)) + "audio: *i\n"


# --- sda messages not fuzzed in test_messages.py ---------------------------------------------------------------------

K = bytes(range(32))
COORDINATOR = crypto.Identity.from_bytes(bytes(range(64)))
COORDINATOR_KEY = COORDINATOR.public().sign_key


def _release() -> Release:
    window, embed, hidden = 2, 3, 2
    params = np.linspace(-1, 1, head_size(window, embed, hidden)).astype("<f4").tobytes()
    return Release("hey_snips", "coordinator", 2, window, embed, hidden, params, bytes(range(32)), 1.0,
                   Metrics(0.5, 0.9, 0.1, 0.01, 0.0, 3, 4), ("round-1",), 1.5, 1e-6, 1000.0)


SAMPLES = {
    "registration": Registration("dev-1", "device", K, K),
    "registry_snapshot": RegistrySnapshot("coordinator", K, 2, 0, 1, (("dev-1", K, K), ("dev-2", K, K))),
    "clerk_snapshot": ClerkSnapshot("coordinator", K, 2, 0, 1, (("clerk-1", K, K, 5, True),
                                                                 ("clerk-2", K, K, 0, False))),
    "ledger_request": LedgerRequest("dev-1", "req-1", "stake", 5),
    "ledger_response": LedgerResponse("dev-1", "req-1", True, "", 10, 5, (b"receipt",)),
    "receipt": Receipt("dev-1", 1, "mint", "memo", 10, 0, 10, 0, 1000.0, K),
    "model_release": _release(),
}
CLASSES = {m.TYPE: type(m) for m in SAMPLES.values()}
DECODE_NAMES = [f"{name}.decode" for name in SAMPLES]


def _decode_or_message_error(cls, raw: bytes) -> None:
    try:
        m = cls.decode(raw)
    except MessageError:
        return
    assert cls.decode(m.encode()) == m  # whatever is accepted round-trips exactly


def test_messages_from_random_bytes_and_msgpack_objects():
    @fuzz(300)
    @given(name=st.sampled_from(sorted(SAMPLES)), raw=st.binary(max_size=300) | msgpack_values.map(codec.pack))
    def inner(name, raw):
        tried(f"{name}.decode")
        _decode_or_message_error(CLASSES[name], raw)

    run(inner, *DECODE_NAMES, quota=300)


def test_messages_with_a_field_replaced_or_bytes_mutated():
    @fuzz(700)
    @given(name=st.sampled_from(sorted(SAMPLES)), data=st.data())
    def inner(name, data):
        tried(f"{name}.decode")
        sample = SAMPLES[name]
        if data.draw(st.booleans()):
            wire = sample.to_wire()
            wire[data.draw(st.sampled_from(sorted(wire)))] = data.draw(msgpack_values)
            raw = codec.pack(wire)
        else:
            raw = data.draw(mutated(sample.encode()))
        _decode_or_message_error(CLASSES[name], raw)

    run(inner, *DECODE_NAMES, quota=700)


def test_envelope_message_type_of_any_payload():
    @fuzz(200)
    @given(payload=st.binary(max_size=200) | msgpack_values.map(codec.pack))
    def inner(payload):
        tried("Envelope.message_type")
        with contextlib.suppress(MessageError):
            assert isinstance(Envelope("s", payload, bytes(64)).message_type(), str)

    run(inner, "Envelope.message_type", quota=200)


def test_open_signed_and_verify_receipt_of_mutated_envelopes():
    sealed = seal(SAMPLES["receipt"], "coordinator", COORDINATOR)

    @fuzz(300)
    @given(raw=mutated(sealed) | st.binary(max_size=200), resign=st.booleans(), data=st.data())
    def inner(raw, resign, data):
        if resign:  # a payload the coordinator really signed, so the decoder behind the signature is reached
            wire = SAMPLES["receipt"].to_wire()
            wire[data.draw(st.sampled_from(sorted(wire)))] = data.draw(msgpack_values)
            payload = codec.pack(wire)
            raw = Envelope("coordinator", payload, crypto.sign(COORDINATOR.signing, "coordinator", payload)).encode()
        tried("open_signed")
        tried("verify_receipt")
        with contextlib.suppress(MessageError, UnknownSender, BadSignature):
            open_signed(raw, Receipt, lambda s: COORDINATOR_KEY if s == "coordinator" else None)
        try:
            r = verify_receipt(raw, "coordinator", COORDINATOR_KEY, "dev-1")
            assert r.party_id == "dev-1"
        except (MessageError, UnknownSender, BadSignature, LedgerError):
            pass

    run(inner, "open_signed", "verify_receipt", quota=300)


def test_verify_release_of_mutated_and_re_signed_releases():
    release = SAMPLES["model_release"]
    sealed = seal(release, "coordinator", COORDINATOR)
    backbone = release.backbone_sha256.hex()

    @fuzz(300)
    @given(how=st.sampled_from(("bytes", "field", "payload")), data=st.data())
    def inner(how, data):
        tried("verify_release")
        if how == "bytes":
            raw = data.draw(mutated(sealed) | st.binary(max_size=200))
        else:
            if how == "field":
                wire = release.to_wire()
                wire[data.draw(st.sampled_from(sorted(wire)))] = data.draw(msgpack_values)
                payload = codec.pack(wire)
            else:
                payload = data.draw(mutated(release.encode()))
            raw = Envelope("coordinator", payload, crypto.sign(COORDINATOR.signing, "coordinator", payload)).encode()
        try:
            r = verify_release(raw, COORDINATOR_KEY, 1, backbone, "coordinator", "hey_snips")
        except ReleaseError:  # MalformedRelease, BadReleaseSignature, WrongModel, StaleRelease, WrongBackbone
            return
        assert r.version > 1 and np.isfinite(r.head().flat()).all()

    run(inner, "verify_release", quota=300)


# --- bitmaps, frames, topics ------------------------------------------------------------------------------------------


def test_decode_bitmap_of_mutated_valid_bitmaps():
    @fuzz(300)
    @given(size=st.integers(1, 300), data=st.data())
    def inner(size, data):
        tried("decode_bitmap")
        chosen = data.draw(st.lists(st.integers(0, size - 1), max_size=20, unique=True))
        raw = encode_bitmap(np.array(sorted(chosen), np.int64), size)
        if data.draw(st.booleans()):
            raw = data.draw(mutated(raw))
        else:  # valid zlib of the wrong length, or with padding bits set
            raw = zlib.compress(data.draw(st.binary(max_size=(size + 7) // 8 + 2)))
        try:
            idx, _bitmap = decode_bitmap(raw, data.draw(st.sampled_from((size, max(1, size - 8), size + 8))))
        except MessageError:
            return
        assert idx.ndim == 1 and (np.diff(idx) > 0).all()

    run(inner, "decode_bitmap", quota=300)


@st.composite
def frames(draw) -> bytes:
    kind = draw(st.sampled_from(("random", "chunk", "whole")))
    if kind == "random":
        return draw(st.binary(max_size=40))
    if kind == "whole":
        return b"\x00" + draw(st.binary(max_size=80))
    msg_id = draw(st.sampled_from((bytes(16), b"\x01" * 16, bytes(range(16)))))
    index, count = draw(st.sampled_from((*_EDGES, 3))) & 0xFFFF, draw(st.sampled_from((*_EDGES, 3))) & 0xFFFF
    return struct.pack(">B16sHH", 1, msg_id, index, count) + draw(st.binary(max_size=60))


def test_unframe_and_reassembler_on_random_frame_sequences():
    @fuzz(300)
    @given(seq=st.lists(st.tuples(st.sampled_from(("a", "b")), frames(), st.floats(0, 50)), max_size=12))
    def inner(seq):
        r = Reassembler(max_message_bytes=200, max_partial=3, max_age_s=60, max_per_topic=2, max_total_bytes=300)
        now = 0.0
        for topic, data, dt in seq:
            tried("unframe")
            with contextlib.suppress(MessageError):
                assert isinstance(unframe(data), bytes)
            tried("Reassembler.feed")
            now += dt
            try:
                out = r.feed(topic, data, now)
            except MessageError:
                continue
            assert out is None or (isinstance(out, bytes) and len(out) <= 200)
            assert r.pending <= 3

    run(inner, "unframe", "Reassembler.feed", quota=300)


def test_a_whole_message_cut_into_chunks_with_one_mutated_chunk():
    payload = bytes(range(256)) * 2

    @fuzz(150)
    @given(data=st.data())
    def inner(data):
        chunks = frame(payload, 100)
        i = data.draw(st.integers(0, len(chunks) - 1))
        chunks[i] = data.draw(mutated(chunks[i]))
        r = Reassembler(max_message_bytes=1000)
        for c in chunks:
            tried("Reassembler.feed")
            try:
                out = r.feed("t", c, 0.0)
            except MessageError:
                continue
            assert out is None or isinstance(out, bytes)

    run(inner, "Reassembler.feed", quota=150)


VALID_TOPICS = ("sda/v1/agg/a1/announce", "sda/v1/agg/a1/participation/dev-1", "sda/v1/agg/a1/result/clerk-1",
                "sda/v1/clerk/clerk-1/job/a1", "sda/v1/registry/dev-1", "sda/v1/registry_snapshot/3",
                "sda/v1/model/hey_snips/release", "sda/v1/clerk_snapshot/0", "sda/v1/ledger/dev-1/request",
                "sda/v1/device/dev-1/inbox")


def test_topics_parse_of_any_text():
    assert topics.parse(VALID_TOPICS[0]) is not None

    @fuzz(400)
    @given(topic=st.text(max_size=80) | st.sampled_from(VALID_TOPICS).flatmap(
        lambda t: mutated(t.encode()).map(lambda b: b.decode("utf-8", "replace"))))
    def inner(topic):
        tried("topics.parse")
        p = topics.parse(topic)  # no exception of any kind: a topic is either ours or not
        assert p is None or isinstance(p, topics.Parsed)

    run(inner, "topics.parse", quota=400)


# --- keys and credentials --------------------------------------------------------------------------------------------


def test_identity_from_bytes_and_open_from():
    me = crypto.Identity.from_bytes(bytes(range(1, 65)))
    box = crypto.seal_to(me.public().box_key, b"secret seed of thirty-two bytes!", b"info")

    @fuzz(300)
    @given(raw=st.binary(max_size=80) | st.binary(min_size=64, max_size=64),
           sealed=mutated(box) | st.binary(max_size=90))
    def inner(raw, sealed):
        tried("Identity.from_bytes")
        with contextlib.suppress(CryptoError):
            assert crypto.Identity.from_bytes(raw).to_bytes() == raw
        tried("open_from")
        with contextlib.suppress(DecryptionFailed):
            crypto.open_from(me.exchange, sealed, b"info")

    run(inner, "Identity.from_bytes", "open_from", quota=300)


CREDENTIALS = {"party_id": "dev-1", "role": "device",
               "broker": {"host": "broker.local", "port": 8883, "username": "dev-1", "password": "pw",
                          "tls_ca": None, "protocol": "auto"},
               "coordinator": {"id": "coordinator", "sign_key": "00" * 32, "box_key": "11" * 32}}
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=10)


def _replace_leaf(tree: dict, path: tuple[str, ...], value):
    out = json.loads(json.dumps(tree))
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def _paths(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in tree.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out.extend(_paths(v, (*prefix, k)))
    return out


@example(text=ALIAS_BOMB.replace("audio: *i\n", "party_id: *i\nrole: device\nbroker: {host: h, port: 1}\n"
                                                "coordinator: {id: c, sign_key: '', box_key: ''}\n"))
@example(text="party_id: d\nrole: device\nbroker: {host: h, port: .inf}\n"
              "coordinator: {id: c, sign_key: '', box_key: ''}")
@example(text="party_id: d\nrole: device\nbroker: {host: h, port: 1}\ncoordinator: {id: c, sign_key: 1, box_key: ''}")
@example(text="party_id: d\nrole: device\nbroker: {host: h, port: 1, username: [1]}\n"
              "coordinator: {id: c, sign_key: '', box_key: ''}")
@fuzz(300)
@given(text=st.text(max_size=120) | yaml_values.map(yaml.safe_dump)
       | st.sampled_from(_paths(CREDENTIALS)).flatmap(
           lambda p: yaml_values.map(lambda v: yaml.safe_dump(_replace_leaf(CREDENTIALS, p, v)))))
def test_credentials_load_of_any_yaml(tmp_path_factory, text):
    tried("Credentials.load")
    path = tmp_path_factory.getbasetemp() / "credentials.yaml"
    path.write_text(text, errors="surrogatepass")
    try:
        c = Credentials.load(path)
    except SdaError:
        return
    assert len(c.coordinator_sign_key) == 32 and len(c.coordinator_box_key) == 32


def test_broker_url_and_report_days():
    @example(url="mqtt://host:99999")
    @example(url="mqtt://[::1")
    @fuzz(300)
    @given(url=st.text(max_size=40) | st.sampled_from(("mqtt://", "mqtts://", "mqtt://u:p@h:")).flatmap(
        lambda s: st.text(max_size=30).map(lambda t: s + t)))
    def urls(url):
        tried("BrokerConfig.from_url")
        try:
            b = BrokerConfig.from_url(url)
        except TransportError:
            return
        assert b.host and 0 <= b.port <= 65535

    @fuzz(200)
    @given(day=st.text(max_size=14) | st.dates().map(str).flatmap(lambda d: mutated(d.encode()).map(
        lambda b: b.decode("ascii", "replace"))))
    def days(day):
        tried("report.parse_day")
        with contextlib.suppress(SdaError):
            report_parse_day(day)
        tried("analytics.parse_day")
        with contextlib.suppress(AssistantError):
            analytics_parse_day(day)

    run(urls, "BrokerConfig.from_url", quota=300)
    run(days, "report.parse_day", "analytics.parse_day", quota=200)


@pytest.mark.parametrize("url", ["mqtt://localhost:99999", "mqtt://localhost:-1", "mqtt://localhost:port",
                                 "mqtt://[::1", "mqtt://[nope]:1883", "http://localhost:1883", "mqtt://"])
def test_hermes_url_refused_with_a_typed_error(url):
    """Not fuzzed: a valid URL starts a client thread connecting to it. Each of these was a ValueError from urllib
    (port out of range, bad IPv6) before the URL check."""
    from assistant.hermes import HermesPublisher

    tried("HermesPublisher(url)")
    with pytest.raises(AssistantError, match="local broker URL"):
        HermesPublisher(url)


def test_read_coordinator_key_of_any_value_or_file(tmp_path):
    path = tmp_path / "coordinator.json"

    @example(value="", content=b'{"sign_key": "\xe4"}', use_file=True)  # not UTF-8: was a UnicodeDecodeError
    @fuzz(200)
    @given(value=st.text(max_size=70), content=st.binary(max_size=90) | json_values.map(json.dumps)
           | json_values.map(lambda v: json.dumps({"sign_key": v})), use_file=st.booleans())
    def inner(value, content, use_file):
        tried("read_coordinator_key")
        if use_file:
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
            value = str(path)
        with contextlib.suppress(AssistantError):
            assert len(read_coordinator_key(value)) == 32

    run(inner, "read_coordinator_key", quota=200)


# --- the device's configuration ---------------------------------------------------------------------------------------

CONFIG = {"audio": {"device": "mic", "input": "/tmp/in.wav", "realtime": False},
          "model": {"dir": "/opt/model", "threshold": 0.5, "patience": 2, "refractory_s": 2.0, "pre_roll_s": 1.0,
                    "verifier": True},
          "store": {"dir": "/var/lib/assistant", "control_socket": "/run/assistant.sock"},
          "hermes": {"url": "mqtt://localhost:1883"},
          "learning": {"credentials": "/etc/creds.yaml", "broker": "mqtts://b:8883", "coordinator_key": "ab" * 32,
                       "coordinator_id": "coordinator", "device_id": "dev-1", "device_key": "/k", "model_id": "m",
                       "min_crowd": 10},
          "log": {"level": "info"}}
#: Config leaves: YAML's scalars, with ints far past float's range.
config_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from((10**400, -(10**400), 2**1024)) | st.floats()
    | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=10) | st.sampled_from(list(CONFIG)),
                                                              kids, max_size=3),
    max_leaves=8)


@example(text=ALIAS_BOMB)
@example(text="model:\n  refractory_s: " + "9" * 400)
@example(text="model: {threshold: " + "1" * 320 + "}")
@fuzz(500)
@given(text=st.text(max_size=120) | st.binary(max_size=60) | config_values.map(yaml.safe_dump)
       | st.sampled_from(_paths(CONFIG)).flatmap(
           lambda p: config_values.map(lambda v: yaml.safe_dump(_replace_leaf(CONFIG, p, v))))
       | st.just(yaml.safe_dump(CONFIG)).flatmap(lambda t: mutated(t.encode())))
def test_parse_config_of_any_text_or_tree(text):
    tried("parse_config")
    try:
        cfg = parse_config(text)
    except ConfigError as exc:
        assert exc.problems
        return
    assert isinstance(cfg, Config)


# --- audio ------------------------------------------------------------------------------------------------------------


def _wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


@st.composite
def wav_headers(draw) -> bytes:
    """A RIFF/WAVE file built field by field: any format tag, channels, rate, width, block size and data length."""
    fmt = struct.pack("<HHIIHH", draw(st.sampled_from((1, 3, 0xFFFE, 0, 2))), draw(st.sampled_from(_EDGES)) & 0xFFFF,
                      draw(st.sampled_from(_EDGES)), draw(st.sampled_from(_EDGES)),
                      draw(st.sampled_from(_EDGES)) & 0xFFFF, draw(st.sampled_from((0, 8, 16, 24, 32, 7, 0xFFFF))))
    fmt += draw(st.binary(max_size=24))
    body = draw(st.binary(max_size=64))
    data_len = draw(st.sampled_from((len(body), 0, 1, len(body) + 1, 0xFFFFFFFF)))
    chunks = [b"fmt " + struct.pack("<I", len(fmt)) + fmt, b"data" + struct.pack("<I", data_len) + body]
    if draw(st.booleans()):
        chunks.insert(draw(st.integers(0, 2)), b"LIST" + struct.pack("<I", 4) + b"INFO")
    if draw(st.booleans()):
        chunks.reverse()
    riff = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", draw(st.sampled_from((len(riff), 0, 0xFFFFFFFF)))) + riff


#: A chunk that claims to run past the end of the RIFF chunk: wave's skip raised a bare RuntimeError.
JUNK_PAST_RIFF = (b"RIFF4\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80>\x00\x00\x00}\x00\x00\x02\x00"
                  b"\x10\x00JUNKd\x00\x00\x00abcddata\x04\x00\x00\x00\x01\x00\x02\x00")


def test_read_audio_of_any_wav_bytes(tmp_path):
    valid = _wav(np.arange(-200, 200, dtype=np.int16))
    path = tmp_path / "clip.wav"

    @example(raw=JUNK_PAST_RIFF)
    @fuzz(400)
    @given(raw=wav_headers() | mutated(valid) | st.binary(max_size=80))
    def inner(raw):
        tried("read_audio")
        path.write_bytes(raw)
        try:
            x = read_audio(path)
        except AudioError:
            return
        assert x.dtype == np.int16 and x.ndim == 1

    run(inner, "read_audio", quota=400)


# --- the control channel ----------------------------------------------------------------------------------------------


class _Target:
    def status(self) -> dict:
        return {"model_version": "abc"}

    def capture(self, seconds: float) -> int:
        if not math.isfinite(seconds) or seconds <= 0:
            raise AssistantError(f"capture of {seconds} s")
        return 7

    def reload(self) -> str:
        return "abc"


@st.composite
def request_lines(draw) -> bytes:
    kind = draw(st.sampled_from(("bytes", "json", "request")))
    if kind == "bytes":
        return draw(st.binary(max_size=100))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    request = {"cmd": draw(st.sampled_from(sorted(control.COMMANDS)) | json_values)}
    if draw(st.booleans()):
        request[draw(st.sampled_from(("seconds", "x")))] = draw(json_values | st.sampled_from((1e309, -1e309)))
    line = json.dumps(request).encode()  # allow_nan: Infinity and NaN, as a client could send them
    return draw(mutated(line)) if draw(st.booleans()) else line


def test_control_answer_of_any_request_line():
    @example(line=b"[" * 5000)
    @example(line=b"[" * 4000)
    @example(line=b'{"cmd": "capture", "seconds": 1e999}')
    @example(line=b"\xff\xfe{}")
    @fuzz(500)
    @given(line=request_lines())
    def inner(line):
        tried("control.answer")
        response = control.answer(line, _Target())  # never raises, whatever comes
        assert isinstance(response["ok"], bool)
        assert response["ok"] or isinstance(response["error"], str)
        json.dumps(response)

    run(inner, "control.answer", quota=500)


# --- model files: card.json, releases.json, .npz ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    (d / "backbone.onnx").write_bytes(b"not really onnx")
    (d / "head.npz").write_bytes(b"not really npz")
    return d


def test_load_model_of_any_card(model_dir):
    card = {"wakeword": "hey_snips", "threshold": 0.5,
            "files": {n: {"sha256": sha256_file(model_dir / n), "bytes": 1} for n in ("backbone.onnx", "head.npz")}}

    @example(text=json.dumps({**card, "threshold": "high"}))
    @example(text=json.dumps({**card, "threshold": [0.5]}))
    @example(text=json.dumps({**card, "files": ["backbone.onnx"]}))
    @example(text=json.dumps({**card, "files": {"backbone.onnx": "abc", "head.npz": {}}}))
    @fuzz(300)
    @given(text=st.text(max_size=60) | json_values.map(json.dumps)
           | st.sampled_from(_paths(card)).flatmap(lambda p: json_values.map(
               lambda v: json.dumps(_replace_leaf(card, p, v))))
           | st.just(json.dumps(card)).flatmap(lambda t: mutated(t.encode()).map(
               lambda b: b.decode("utf-8", "replace"))))
    def inner(text):
        tried("load_model(card.json)")
        (model_dir / "card.json").write_text(text, errors="surrogatepass")
        try:
            files = load_model(model_dir)
        except ModelError:
            return
        assert files.threshold is None or 0 < files.threshold < 1

    run(inner, "load_model(card.json)", quota=300)


def test_model_versions_state_of_any_json(tmp_path):
    (tmp_path / "versions" / "3").mkdir(parents=True)
    os.symlink("versions/3", tmp_path / "current")
    versions = ModelVersions(tmp_path)
    state = {"installed": [1, 3], "refused": {"2": "rolled back"}, "highest_seen": 3}

    @example(text=json.dumps({"installed": [], "refused": {}}))
    @example(text=json.dumps([1, 2]))
    @example(text=json.dumps({"installed": 3, "refused": {}, "highest_seen": 3}))
    @example(text=json.dumps({"installed": [3], "refused": {"x": 1}, "highest_seen": 3}))
    @example(text=json.dumps({"installed": [3], "refused": {}, "highest_seen": "3"}))
    @fuzz(300)
    @given(text=st.text(max_size=40) | json_values.map(json.dumps)
           | st.sampled_from(_paths(state)).flatmap(lambda p: json_values.map(
               lambda v: json.dumps(_replace_leaf(state, p, v)))))
    def inner(text):
        tried("ModelVersions state")
        (tmp_path / STATE_FILE).write_text(text, errors="surrogatepass")
        try:
            installed, refused, highest = versions.installed(), versions.refused(), versions.highest_seen()
        except ModelError:
            return
        assert installed[-1] == 3 and highest >= 3
        assert all(isinstance(v, int) for v in installed) and all(isinstance(k, int) for k in refused)

    run(inner, "ModelVersions state", quota=300)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npz_samples() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    h = Head.init(2, 3, 2, rng)
    buf = io.BytesIO()
    h.save(buf)  # type: ignore[arg-type]
    return {
        "Head.load": buf.getvalue(),
        "Verifier.load": _npz(format=np.array(1), shape=np.array([2, 3]), mean=np.zeros(6), scale=np.ones(6),
                              weights=np.zeros(6), scalars=np.array([0.1, -1.0, 0.0, 0.0]), counts=np.array([3, 4])),
        "ValidationSet.load": _npz(format=np.array(1), embeddings=np.zeros((6, 3), np.float32),
                                   lengths=np.array([3, 3]), labels=np.array([0, 1], np.int8), window=np.array(2),
                                   backbone_sha256=np.array("ab" * 32), recipe=np.array("r")),
        "load_state": _npz(format=np.array(1), params=np.zeros(4), m=np.zeros(4), v=np.zeros(4),
                           released=np.zeros(4), step=np.array(1), rho=np.array(0.5), released_version=np.array(1),
                           rounds=np.array(["r1"]), pending=np.array(["r1"]), config=np.array([1e-2, 0.9, 0.99, 1e-3])),
    }


NPZ = _npz_samples()
NPZ_LOADERS = {"Head.load": (Head.load, ModelError), "Verifier.load": (Verifier.load, LearningError),
               "ValidationSet.load": (ValidationSet.load, LearningError), "load_state": (load_state, LearningError)}
#: Arrays an attacker can put in an .npz without pickle: any shape, numeric, bool, str or bytes dtypes.
arrays = st.sampled_from((np.array(1), np.array(-1), np.array(2**40), np.array([]), np.zeros((0, 3)), np.ones(6),
                          np.array([1, 2]), np.array([np.nan]), np.array([np.inf, 1, 2, 3]), np.array("text"),
                          np.array(["a", "b"]), np.array(b"raw"), np.array([True]), np.zeros((2, 2, 2)),
                          np.array(1 + 2j), np.array([2**63 - 1], np.int64), np.array(3.5)))


def _pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _plain_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    return buf.getvalue()


# A complex or NaN array is cast (with numpy's warning) and then refused or accepted on its values: not a crash.
@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning", "ignore:invalid value encountered in cast")
def test_npz_loaders_of_any_file(tmp_path):
    @example(name="Head.load", how="raw", data=_plain_npy())  # np.load gives an array: no context manager
    @example(name="load_state", how="raw", data=_npz(format=np.array(1))[:-30])  # a cut zip
    @example(name="Verifier.load", how="raw", data=_pickled_npy())
    @example(name="load_state", how="raw", data=_npz(format=np.array(1), params=np.array([{"x": 1}], dtype=object)))
    @fuzz(600)
    @given(name=st.sampled_from(sorted(NPZ)), how=st.sampled_from(("random", "mutated", "arrays")), data=st.data())
    def fuzz_npz(name, how, data):
        loader, error = NPZ_LOADERS[name]
        tried(name)
        if how == "raw":
            raw = data
        elif how == "random":
            raw = data.draw(st.binary(max_size=120))
        elif how == "mutated":
            raw = data.draw(mutated(NPZ[name]))
        else:  # the right keys (one maybe missing), each holding any array
            with np.load(io.BytesIO(NPZ[name])) as z:
                keys = list(z.files)
            arrays_in = {k: data.draw(arrays) if data.draw(st.booleans()) else z_get(NPZ[name], k) for k in keys}
            if data.draw(st.booleans()):
                arrays_in.pop(data.draw(st.sampled_from(keys)))
            raw = _npz(**arrays_in)
        path = tmp_path / f"{name}.npz"
        path.write_bytes(raw)
        with contextlib.suppress(error):
            loader(path)

    run(fuzz_npz, *NPZ, quota=600)


def z_get(raw: bytes, key: str) -> np.ndarray:
    with np.load(io.BytesIO(raw)) as z:
        return z[key]


# --- the embedded broker's CONNECT peek and packet-size guard ---------------------------------------------------------


def test_embedded_broker_connect_peek_and_size_guard():
    @fuzz(300)
    @given(raw=st.binary(max_size=30) | st.binary(max_size=20).map(lambda b: b"\x10" + b),
           reads=st.lists(st.binary(max_size=20), max_size=6))
    def inner(raw, reads):
        tried("broker._peek_connect")

        async def peek():
            reader = asyncio.StreamReader()
            reader.feed_data(raw)
            reader.feed_eof()
            return await _peek_connect(reader)

        try:
            got, level = asyncio.run(peek())
            assert raw.startswith(got) and (level is None or 0 <= level <= 255)
        except asyncio.IncompleteReadError:
            pass
        tried("broker._GuardedReader")
        guard = _GuardedReader(asyncio.StreamReader.__new__(asyncio.StreamReader), None, 64)
        for chunk in reads:
            assert isinstance(guard._accept(chunk), bool)

    run(inner, "broker._peek_connect", "broker._GuardedReader", quota=300)

"""The MQTT adapter: framing and chunking, v5/3.1.1, reconnects, the bounded queue."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from brokers import MosquittoBroker
from hypothesis import given, settings
from hypothesis import strategies as st

from sda.errors import BrokerUnreachable, MessageError, TransportError
from sda.mqtt.broker import EmbeddedBroker
from sda.mqtt.framing import Reassembler, frame
from sda.mqtt.transport import BrokerConfig, Transport

# --- framing (pure) ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=0, max_size=5000), size=st.integers(30, 6000), seed=st.integers(0, 2**32))
def test_frames_reassemble_in_any_order_with_duplicates(payload, size, seed):
    frames = frame(payload, size)
    assert all(len(f) <= max(size, len(payload) + 1) for f in frames)
    if len(payload) + 1 > size:
        assert len(frames) > 1 and all(len(f) <= size for f in frames)
    rng = random.Random(seed)
    shuffled = frames + rng.sample(frames, k=min(2, len(frames)))  # QoS 1 may deliver twice
    rng.shuffle(shuffled)
    r = Reassembler(max_message_bytes=10_000)
    out = [p for f in shuffled if (p := r.feed("t", f, now=0.0)) is not None]
    assert out[0] == payload
    assert r.pending == 0


def test_reassembler_refuses_oversized_malformed_and_inconsistent_frames():
    r = Reassembler(max_message_bytes=1000)
    with pytest.raises(MessageError):
        r.feed("t", b"\x00" + bytes(1001))
    with pytest.raises(MessageError):
        r.feed("t", b"")
    with pytest.raises(MessageError):
        r.feed("t", b"\x07abc")
    big = frame(bytes(3000), 200)
    with pytest.raises(MessageError, match="grows over"):
        for f in big:
            r.feed("t", f)
    a, b = frame(bytes(500), 100)[:2]
    r.feed("u", a)
    bad = b[:17] + (1).to_bytes(2, "big") + (99).to_bytes(2, "big") + b[21:]
    with pytest.raises(MessageError, match="disagree"):
        r.feed("u", bad)
    with pytest.raises(MessageError, match="valid position"):
        r.feed("u", b"\x01" + bytes(16) + (5).to_bytes(2, "big") + (3).to_bytes(2, "big") + b"x")


def test_reassembler_bounds_partial_messages_by_count_and_age():
    r = Reassembler(max_message_bytes=10_000, max_partial=3, max_age_s=10)
    for i in range(5):
        r.feed(f"t{i}", frame(bytes(300), 100)[0], now=float(i))
    assert r.pending == 3
    r.feed("late", frame(bytes(300), 100)[0], now=100.0)  # everything older than 10 s is gone
    assert r.pending == 1


# --- against real brokers ---------------------------------------------------------------------


class Inbox:
    def __init__(self):
        self.items: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()

    def __call__(self, topic, payload, retained, ack):
        with self.cond:
            self.items.append((topic, payload, retained))
            self.cond.notify_all()
        ack()

    def wait(self, n: int, timeout: float = 15.0) -> list[tuple[str, bytes, bool]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.items) >= n, timeout)
            return list(self.items)


@pytest.fixture
def small_packet_broker():
    b = MosquittoBroker(users=("coordinator", "dev1"), max_packet_bytes=4096).start()
    try:
        yield b
    finally:
        b.cleanup()


def cfg(b: MosquittoBroker, user: str, **kw) -> BrokerConfig:
    return BrokerConfig(host=b.host, port=b.port, username=user, password=b.passwords[user], **kw)


def test_v5_chunking_below_the_brokers_maximum_packet_size(small_packet_broker):
    b = small_packet_broker
    inbox = Inbox()
    rx = Transport("rx", cfg(b, "coordinator"), inbox, manual_ack=True)
    tx = Transport("tx", cfg(b, "dev1"), Inbox())
    rx.start()
    tx.start()
    try:
        assert rx.protocol_version == 5 and tx.broker_max_packet == 4096
        rx.subscribe("sda/v1/agg/+/participation/+")
        time.sleep(0.2)
        payload = os.urandom(50_000)
        infos = tx.publish("sda/v1/agg/a1/participation/dev1", payload)
        assert len(infos) > 12  # chunked, every chunk under the broker's limit
        assert tx.wait_published(infos)
        got = inbox.wait(1)
        assert got[0][:2] == ("sda/v1/agg/a1/participation/dev1", payload)
        with pytest.raises(TransportError, match="retained"):
            tx.publish("sda/v1/registry/dev1", os.urandom(10_000), retain=True)
    finally:
        rx.stop()
        tx.stop()


def test_subscriptions_restored_and_queue_drained_after_a_broker_restart(small_packet_broker):
    b = small_packet_broker
    inbox = Inbox()
    rx = Transport("rx2", cfg(b, "coordinator"), inbox)
    tx = Transport("tx2", cfg(b, "dev1", max_queued_messages=20), Inbox())
    rx.start()
    tx.start()
    try:
        rx.subscribe("sda/v1/agg/+/participation/dev1")
        time.sleep(0.2)
        b.stop()
        time.sleep(0.3)
        assert not tx.connected.is_set()
        for i in range(5):  # queued while the broker is down
            tx.publish("sda/v1/agg/q/participation/dev1", b"m%d" % i)
        with pytest.raises(TransportError, match="queue full"):
            for i in range(100):
                tx.publish("sda/v1/agg/q/participation/dev1", b"x%d" % i)
        b.start()
        got = inbox.wait(5, timeout=30)
        assert [p for _, p, _ in got[:5]] == [b"m%d" % i for i in range(5)]
        assert rx.reconnects >= 1 and tx.reconnects >= 1
    finally:
        rx.stop()
        tx.stop()


def test_bad_credentials_fail_fast_without_downgrading(small_packet_broker):
    b = small_packet_broker
    t = Transport("bad", BrokerConfig(host=b.host, port=b.port, username="dev1", password="wrong"), Inbox())
    start = time.monotonic()
    with pytest.raises(TransportError, match="cannot connect") as refused:
        t.start(timeout_s=10)
    assert time.monotonic() - start < 5
    assert not isinstance(refused.value, BrokerUnreachable)  # an answer: not worth trying again


def test_a_certificate_that_does_not_verify_is_a_final_answer_not_an_unreachable_broker(tmp_path):
    """A TLS listener whose certificate the client's CA did not sign (a wrong CA file, or someone in the middle):
    a configuration to fix or an attack, so a device must not keep retrying it as if the broker were down."""
    from brokers import free_port
    from test_acl import _test_ca

    ca, crt, key = _test_ca(tmp_path)
    port = free_port()
    tls = {"port": port, "cafile": ca, "certfile": crt, "keyfile": key, "require_certificate": False}
    with MosquittoBroker(("dev1",), tls=tls) as b:
        good = Transport("tls-ok", BrokerConfig(host=b.host, port=port, username="dev1",
                                                password=b.passwords["dev1"], tls_ca=str(ca)), Inbox())
        good.start(timeout_s=10)  # the same listener with the right CA: it is up
        good.stop()
        t = Transport("tls-bad", BrokerConfig(host=b.host, port=port, username="dev1", password=b.passwords["dev1"],
                                              tls_ca=str(crt)), Inbox())  # not the CA that signed the server
        with pytest.raises(TransportError, match="TLS") as failed:
            t.start(timeout_s=10)
        assert not isinstance(failed.value, BrokerUnreachable)


def test_falls_back_to_mqtt_311_on_the_embedded_broker():
    with EmbeddedBroker() as broker:
        inbox = Inbox()
        a = Transport("a", BrokerConfig(port=broker.port), inbox)
        c = Transport("c", BrokerConfig(port=broker.port), Inbox())
        a.start()
        c.start()
        try:
            assert a.protocol_version == 4  # 3.1.1
            a.subscribe("sda/v1/#")
            time.sleep(0.2)
            payload = os.urandom(300_000)  # over our 256 KiB default: chunked on 3.1.1 too
            assert len(c.publish("sda/v1/agg/x/announce", payload)) == 2
            assert inbox.wait(1)[0][1] == payload
        finally:
            a.stop()
            c.stop()


def test_unreachable_broker_times_out_with_a_clear_error():
    from brokers import free_port

    t = Transport("lonely", BrokerConfig(port=free_port()), Inbox())
    start = time.monotonic()
    with pytest.raises(BrokerUnreachable, match="cannot connect"):  # worth trying again later
        t.start(timeout_s=15)
    assert time.monotonic() - start < 10  # the refused connection is reported, not waited out


def test_a_chunked_message_is_redelivered_until_the_service_acknowledges_it(small_packet_broker):
    b = small_packet_broker
    got: list[tuple[bytes, object]] = []
    cond = threading.Condition()

    def keep(topic, payload, retained, ack):
        with cond:
            got.append((payload, ack))
            cond.notify_all()

    rx = Transport("rx3", cfg(b, "coordinator"), keep, manual_ack=True)
    tx = Transport("tx3", cfg(b, "dev1"), Inbox())
    rx.start()
    tx.start()
    try:
        rx.subscribe("sda/v1/agg/+/participation/dev1")
        time.sleep(0.2)
        payload = os.urandom(20_000)  # 6 chunks under the 4 KB limit
        assert tx.wait_published(tx.publish("sda/v1/agg/c/participation/dev1", payload))
        with cond:
            assert cond.wait_for(lambda: len(got) == 1, 15)
        rx.redeliver_unacknowledged()  # as after a crash before the commit: nothing was acked
        with cond:
            assert cond.wait_for(lambda: len(got) == 2, 15)
        assert got[1][0] == payload
        got[1][1]()  # stored: now acknowledge every chunk
        time.sleep(0.3)
        rx.redeliver_unacknowledged()
        time.sleep(1.5)
        assert len(got) == 2  # acknowledged messages are not sent again
    finally:
        rx.stop()
        tx.stop()


def test_one_topic_cannot_evict_another_topics_partial_message():
    r = Reassembler(max_message_bytes=10_000, max_per_topic=2)
    victim = frame(bytes(range(200)) * 2, 100)
    r.feed("sda/v1/agg/a/participation/honest", victim[0])
    for _ in range(50):  # a flood of half messages on the attacker's own topic
        r.feed("sda/v1/agg/a/participation/mallory", frame(os.urandom(300), 100)[0])
    out = [r.feed("sda/v1/agg/a/participation/honest", f) for f in victim[1:]]
    assert out[-1] == bytes(range(200)) * 2
    assert r.pending == 2  # only the attacker's two newest partial messages remain

"""The embedded amqtt broker, seen through paho-mqtt 2.x clients as the transport will use it.

Besides our own guarantees (loopback only, start/stop, port freed, packet-size limit), these tests pin
what amqtt 0.12 does where brokers differ: MQTT v5 refused with a CONNACK, persistent sessions,
retained messages. If an amqtt upgrade changes one of these, a test here says which.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading

import paho.mqtt.client as mqtt
import pytest

from sda.errors import SdaError, TransportError
from sda.mqtt import broker as broker_module
from sda.mqtt import topics
from sda.mqtt.broker import EmbeddedBroker

WAIT_S = 5.0


class Client:
    """A paho client on its own network thread, with its messages in a queue."""

    def __init__(self, port: int, client_id: str, *, protocol: int = mqtt.MQTTv311, clean_session=False):
        extra = {} if protocol == mqtt.MQTTv5 else {"clean_session": clean_session}
        self.paho = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            **extra,
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack = threading.Event()
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.reason_code: mqtt.ReasonCode | None = None
        self.session_present: bool | None = None
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = lambda *_: self.disconnected.set()
        self.paho.on_subscribe = lambda *_: self.subscribed.set()
        self.paho.on_message = lambda _c, _u, msg: self.messages.put(msg)
        # paho reconnects by itself after a drop; a short delay keeps stop/teardown fast.
        self.paho.reconnect_delay_set(min_delay=0.05, max_delay=0.05)
        self.paho.connect("127.0.0.1", port, keepalive=30)
        self.paho.loop_start()
        assert self.connack.wait(WAIT_S), "no CONNACK"

    def _on_connect(self, _c, _u, flags, reason_code, _props) -> None:
        self.reason_code = reason_code
        self.session_present = flags.session_present
        self.connack.set()

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.subscribed.clear()
        self.paho.subscribe(topic_filter, qos)
        assert self.subscribed.wait(WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), "no PUBACK"

    def next(self, timeout: float = WAIT_S) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def quiet_for(self, seconds: float) -> list[mqtt.MQTTMessage]:
        """Whatever arrives within `seconds` (expected: nothing)."""
        try:
            return [self.messages.get(timeout=seconds)]
        except queue.Empty:
            return []

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def broker():
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def clients():
    made: list[Client] = []

    def make(port: int, client_id: str, **kw) -> Client:
        made.append(Client(port, client_id, **kw))
        return made[-1]

    yield make
    for c in made:
        c.close()


def _connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_start_listens_at_once_and_stop_joins_and_closes():
    b = EmbeddedBroker()
    assert b.port == 0 and not b.running
    b.start()
    try:
        assert b.running and 0 < b.port < 65536
        assert b.host == "127.0.0.1" and b.url == f"mqtt://127.0.0.1:{b.port}"
        socket.create_connection((b.host, b.port), timeout=1).close()  # no sleep, no retry
        with pytest.raises(TransportError):
            b.start()
    finally:
        b.stop()
    assert not b.running
    assert not any(t.name.startswith("mqtt-broker") for t in threading.enumerate())
    assert _connect_refused(b.port)
    b.stop()  # a second stop is a no-op


@pytest.mark.parametrize("size", [0, 256, 1 << 20], ids=["empty", "all-byte-values", "1MiB"])
def test_qos1_delivers_the_exact_bytes(broker, clients, size):
    sub = clients(broker.port, "sub-exact")
    pub = clients(broker.port, "pub-exact")
    sub.subscribe("sda/v1/test/#", qos=1)
    payload = bytes(range(256)) if size == 256 else os.urandom(size)
    pub.publish("sda/v1/test/bytes", payload, qos=1)
    msg = sub.next()
    assert (msg.topic, msg.qos, msg.retain) == ("sda/v1/test/bytes", 1, False)
    assert msg.payload == payload


def test_retained_message_reaches_a_later_subscriber_only(broker, clients):
    topic = topics.announce("agg-1")
    pub = clients(broker.port, "coordinator")
    pub.publish(topic, b"signed announce", qos=1, retain=True)
    late = clients(broker.port, "device-late")
    late.subscribe(topics.ALL_ANNOUNCES, qos=1)
    msg = late.next()
    assert (msg.topic, msg.payload, msg.retain, msg.qos) == (topic, b"signed announce", True, 1)
    # amqtt alone would also replay it to any client connecting later, subscribed or not.
    bystander = clients(broker.port, "bystander")
    assert bystander.quiet_for(0.3) == []


def test_persistent_session_gets_what_was_published_while_offline(broker, clients):
    device = clients(broker.port, "device-7", clean_session=False)
    assert device.session_present is False
    device.subscribe(topics.inbox("device-7"), qos=1)
    device.close()
    coordinator = clients(broker.port, "coordinator")
    sent = [b"receipt-%d" % i for i in range(3)]
    for payload in sent:
        coordinator.publish(topics.inbox("device-7"), payload, qos=1)

    back = clients(broker.port, "device-7", clean_session=False)
    assert back.session_present is True
    got = [back.next() for _ in sent]
    assert [m.payload for m in got] == sent  # all of them, in order
    assert {(m.topic, m.qos) for m in got} == {(topics.inbox("device-7"), 1)}
    # amqtt sets the RETAIN flag on messages queued for an offline session (mosquitto does not).
    assert all(m.retain for m in got)
    # The subscription survived too: live delivery goes on without subscribing again.
    coordinator.publish(topics.inbox("device-7"), b"live", qos=1)
    assert back.next().payload == b"live"


def test_amqtt_anonymous_sessions_would_lose_offline_messages(broker, clients, monkeypatch):
    """Why `_OpenLoopbackAuth` exists: amqtt drops queued messages of sessions marked anonymous."""

    async def anonymous(self, *, session):
        session.is_anonymous = True  # what amqtt's own AnonymousAuthPlugin does
        return True

    monkeypatch.setattr(broker_module._OpenLoopbackAuth, "authenticate", anonymous)
    device = clients(broker.port, "anon-device", clean_session=False)
    device.subscribe("sda/v1/test/anon", qos=1)
    device.close()
    clients(broker.port, "anon-pub").publish("sda/v1/test/anon", b"lost", qos=1)
    back = clients(broker.port, "anon-device", clean_session=False)
    assert back.quiet_for(0.5) == []


def test_wildcard_subscription_on_announces(broker, clients):
    device = clients(broker.port, "device-w")
    device.subscribe(topics.ALL_ANNOUNCES, qos=1)
    coordinator = clients(broker.port, "coordinator-w")
    coordinator.publish(topics.participation("agg-1", "device-w"), b"not an announce")
    coordinator.publish("sda/v1/agg/agg-1/extra/announce", b"two levels")
    coordinator.publish(topics.announce("agg-1"), b"one")
    coordinator.publish(topics.announce("agg-2"), b"two")
    got = [device.next() for _ in range(2)]
    assert [(m.topic, m.payload) for m in got] == [
        ("sda/v1/agg/agg-1/announce", b"one"),
        ("sda/v1/agg/agg-2/announce", b"two"),
    ]
    assert device.quiet_for(0.3) == []


def test_stop_frees_the_port_for_a_new_broker(clients):
    first = EmbeddedBroker()
    first.start()
    port = first.port
    c = clients(port, "left-connected")
    first.stop()
    assert c.disconnected.wait(WAIT_S)
    with EmbeddedBroker(port=port) as second:
        assert second.port == port
        again = clients(port, "on-second")
        assert again.reason_code == 0


def test_busy_port_raises_transport_error(broker):
    other = EmbeddedBroker(port=broker.port)
    with pytest.raises(TransportError, match="address already in use") as info:
        other.start()
    assert isinstance(info.value, SdaError)
    assert not other.running


NOT_LOOPBACK = ["0.0.0.0", "", "::", "192.168.1.10", "10.0.0.1", "example.com", "::ffff:127.0.0.1"]


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_non_loopback_host_is_refused(host):
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(host=host)


def test_loopback_hosts_are_accepted():
    assert EmbeddedBroker("localhost").host == "127.0.0.1"  # one address, so port 0 means one port
    assert EmbeddedBroker("127.3.2.1").host == "127.3.2.1"
    with EmbeddedBroker("::1") as b:
        assert b.url == f"mqtt://[::1]:{b.port}"
        socket.create_connection(("::1", b.port), timeout=1).close()
    for bad in ({"port": -1}, {"port": 70000}, {"max_packet_bytes": 1}):
        with pytest.raises(ValueError):
            EmbeddedBroker(**bad)


def _raw_connect(port: int, protocol_level: int) -> bytes:
    """Send a bare CONNECT and return every byte the broker sends until it closes (or 2 s pass)."""
    variable = struct.pack("!H", 4) + b"MQTT" + bytes([protocol_level, 0x02]) + struct.pack("!H", 30)
    if protocol_level == 5:
        variable += b"\x00"  # empty property list
    body = variable + struct.pack("!H", 3) + b"raw"
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        received = b""
        try:
            while chunk := s.recv(64):
                received += chunk
        except TimeoutError:
            received += b"<still open>"
    return received


def test_mqtt_v5_connect_gets_connack_unacceptable_protocol_then_close(broker, clients):
    # On the wire: a 3.1.1-shaped CONNACK with return code 1 (unacceptable protocol version), then EOF.
    assert _raw_connect(broker.port, 5) == b"\x20\x02\x00\x01"
    # What a paho v5 client sees: a refusing CONNACK (reason 0x84), then a disconnect.
    v5 = clients(broker.port, "v5-probe", protocol=mqtt.MQTTv5)
    assert v5.reason_code.is_failure and v5.reason_code.value == 0x84
    assert v5.reason_code.getName() == "Unsupported protocol version"
    assert v5.disconnected.wait(WAIT_S)
    # The same client id then connects fine with 3.1.1.
    assert clients(broker.port, "v5-probe", protocol=mqtt.MQTTv311).reason_code == 0


def test_max_packet_bytes_disconnects_the_sender_and_drops_the_packet(clients):
    limit = 10_000
    with EmbeddedBroker(max_packet_bytes=limit) as b:
        sub = clients(b.port, "sub-limit")
        sub.subscribe("sda/v1/test/#", qos=1)
        pub = clients(b.port, "pub-limit")
        topic = "sda/v1/test/x"
        # PUBLISH size = 1 type byte + 2 length bytes + (2 + len(topic)) + 2 packet id + payload
        fits = os.urandom(limit - 1 - 2 - (2 + len(topic)) - 2)
        pub.publish(topic, fits)
        assert sub.next().payload == fits
        pub.paho.publish(topic, fits + b"!", qos=1)
        assert pub.disconnected.wait(WAIT_S)
        pub.paho.loop_stop()  # else paho reconnects and resends the same QoS 1 packet, forever
        assert sub.quiet_for(0.5) == []
        # The broker and the other client carry on.
        clients(b.port, "pub-limit-2").publish(topic, b"small")
        assert sub.next().payload == b"small"
        # An oversized first packet (CONNECT) is refused the same way: no CONNACK, socket closed.
        with EmbeddedBroker(max_packet_bytes=10) as tiny:
            assert _raw_connect(tiny.port, 4) == b""

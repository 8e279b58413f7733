"""A thin adapter over paho-mqtt 2.x: it moves bytes, the protocol objects decide.

- MQTT v5 when the broker offers it, 3.1.1 otherwise (probed at the first connection);
- QoS 1, a fixed client id, a persistent session (v5 session expiry / v3 clean_session=False);
- reconnect with exponential backoff (paho's own loop), subscriptions restored on reconnect;
- a bounded outgoing queue (TransportError when full, never unbounded memory);
- payloads above the broker's maximum packet size chunked (`framing`) and reassembled.
Incoming messages go to one callback, `on_message(topic, payload, retained, ack)`, called on
paho's network thread: a service puts them on its own queue and does the work elsewhere. With
`manual_ack=True` the broker's QoS 1 acknowledgement waits until the service calls `ack()`
(after its database commit), so a crash before the commit gets the message redelivered.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import BrokerUnreachable, MessageError, TransportError
from ..protocol.codec import MAX_MESSAGE_BYTES
from .framing import PUBLISH_OVERHEAD, Reassembler, frame

log = logging.getLogger("sda.mqtt")

#: Chunk size when the broker announces no maximum packet size (MQTT 3.1.1, or v5 unlimited).
DEFAULT_MAX_PACKET_BYTES = 256 * 1024
_UNSUPPORTED_PROTOCOL = 0x84  # v5 CONNACK reason code: Unsupported Protocol Version


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and how to log in. `tls_ca` enables TLS (server certificate checked)."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    protocol: str = "auto"  # "auto", "5" or "3.1.1"
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    max_queued_messages: int = 10_000
    max_packet_bytes: int | None = None  # our own cap; the broker's v5 announcement also applies

    @classmethod
    def from_url(cls, url: str, **kw: object) -> BrokerConfig:
        """mqtt://[user:pass@]host[:port] or mqtts://... (TLS with the system CAs)."""
        from urllib.parse import urlsplit

        try:
            u = urlsplit(url)
            port = u.port  # ValueError for a port that is not a number in 0-65535
        except ValueError as exc:
            raise TransportError(f"broker URL must look like mqtt://host:1883, got {url!r} ({exc})") from None
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise TransportError(f"broker URL must look like mqtt://host:1883, got {url!r}")
        port = port or (8883 if u.scheme == "mqtts" else 1883)
        fields = {"host": u.hostname, "port": port, "username": u.username, "password": u.password}
        if u.scheme == "mqtts":
            fields["tls_ca"] = kw.pop("tls_ca", None) or "system"
        fields.update(kw)
        return cls(**fields)  # type: ignore[arg-type]


def _noop() -> None:
    pass


class Transport:
    """One MQTT connection for one party (fixed client id)."""

    def __init__(
        self,
        client_id: str,
        config: BrokerConfig,
        on_message: Callable[[str, bytes, bool, Callable[[], None]], None],
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        manual_ack: bool = False,
    ):
        self.manual_ack = manual_ack
        self.client_id = client_id
        self.config = config
        self.on_message = on_message
        self.protocol_version: int | None = None
        self.broker_max_packet: int | None = None
        self.connected = threading.Event()
        self.reconnects = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.rejected = 0
        self._reassembler = Reassembler(max_message_bytes)
        self._subscriptions: list[str] = []
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._probe = threading.Event()
        self._probe_result: str | None = None
        self._ever_connected = False

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, timeout_s: float = 15.0) -> None:
        """Connect (probing v5 then 3.1.1 when protocol is "auto"); TransportError on timeout."""
        deadline = time.monotonic() + timeout_s
        choices = {"auto": [mqtt.MQTTv5, mqtt.MQTTv311], "5": [mqtt.MQTTv5], "3.1.1": [mqtt.MQTTv311]}
        if self.config.protocol not in choices:
            raise TransportError(f"protocol must be auto, 5 or 3.1.1, got {self.config.protocol!r}")
        last = "no answer"
        protocols = choices[self.config.protocol]
        for attempt, proto in enumerate(protocols):
            client = self._make_client(proto)
            self._probe.clear()
            self._probe_result = None
            self._client = client
            self._connect(client, proto)
            client.loop_start()
            remaining = max(0.0, deadline - time.monotonic())
            if attempt < len(protocols) - 1:
                # Some 3.1.1-only brokers (amqtt) never answer a v5 CONNECT that has properties:
                # give the probe a short time, and keep the rest for 3.1.1.
                remaining = min(remaining / 2, 3.0)
            self._probe.wait(remaining)
            if self._probe_result == "ok":
                self.protocol_version = 5 if proto == mqtt.MQTTv5 else 4
                log.info("%s connected to %s:%d with MQTT %s", self.client_id, self.config.host,
                         self.config.port, "5" if proto == mqtt.MQTTv5 else "3.1.1")
                return
            client.loop_stop()
            client.disconnect()
            self._client = None
            last = self._probe_result or f"no CONNACK from {self.config.host}:{self.config.port}"
            if self._probe_result not in ("unsupported", "closed", None):
                break  # refused for another reason (auth) or no broker at all: do not downgrade
        # Nobody answered (or the connection closed before a CONNACK): perhaps later; a refusal is final.
        unreachable = self._probe_result in (None, "closed")
        raise (BrokerUnreachable if unreachable else TransportError)(
            f"{self.client_id}: cannot connect to {self.config.host}:{self.config.port}: {last}")

    def stop(self) -> None:
        """Disconnect cleanly; queued QoS 1 messages stay in the broker-side session."""
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self.connected.clear()

    def redeliver_unacknowledged(self) -> None:
        """Drop and re-open the connection (same client id, same session), so the broker sends
        again every QoS 1 message we have not acknowledged: what a service does when it could
        not store what it received."""
        client = self._client
        if client is None:
            return
        client.loop_stop()
        client.disconnect()
        self.connected.clear()
        self._connect(client, mqtt.MQTTv5 if self.protocol_version == 5 else mqtt.MQTTv311)
        client.loop_start()

    def __enter__(self) -> Transport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- publishing and subscribing ----------------------------------------------------------

    def max_frame_bytes(self) -> int:
        """Largest frame we publish: our cap, lowered to what the broker announced."""
        limit = self.config.max_packet_bytes or DEFAULT_MAX_PACKET_BYTES
        if self.broker_max_packet:
            limit = min(limit, self.broker_max_packet)
        return max(limit - PUBLISH_OVERHEAD, 1024)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> list[mqtt.MQTTMessageInfo]:
        """Publish at QoS 1, chunked if needed. TransportError when the outgoing queue is full.

        While disconnected, paho keeps QoS 1 messages queued (up to the bound) and sends them
        after reconnecting.
        """
        client = self._client
        if client is None:
            raise TransportError(f"{self.client_id}: not started")
        frames = frame(payload, self.max_frame_bytes())
        if retain and len(frames) > 1:
            raise TransportError(
                f"retained message on {topic} is {len(payload)} bytes, over one packet"
                f" ({self.max_frame_bytes()}); retained messages cannot be chunked"
            )
        infos = []
        for f in frames:
            info = client.publish(topic, f, qos=1, retain=retain)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                raise TransportError(f"{self.client_id}: outgoing queue full ({self.config.max_queued_messages})")
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                raise TransportError(f"{self.client_id}: publish to {topic} failed: {mqtt.error_string(info.rc)}")
            self.bytes_out += len(f)
            infos.append(info)
        return infos

    def clear_retained(self, topic: str) -> None:
        """Remove a retained message (an empty retained publish)."""
        if self._client is not None:
            self._client.publish(topic, b"", qos=1, retain=True)

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1 now (if connected) and again after every reconnect."""
        with self._lock:
            if topic_filter not in self._subscriptions:
                self._subscriptions.append(topic_filter)
        if self._client is not None and self.connected.is_set():
            self._client.subscribe(topic_filter, qos=1)

    def wait_published(self, infos: list[mqtt.MQTTMessageInfo], timeout_s: float = 10.0) -> bool:
        """True once every message was acknowledged by the broker (PUBACK)."""
        deadline = time.monotonic() + timeout_s
        for info in infos:
            while not info.is_published():
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.005)
        return True

    # --- paho plumbing -----------------------------------------------------------------------

    def _make_client(self, proto: int) -> mqtt.Client:
        cfg = self.config
        if proto == mqtt.MQTTv5:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto,
                            manual_ack=self.manual_ack)
        else:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto,
                            clean_session=False, manual_ack=self.manual_ack)
        if cfg.username is not None:
            c.username_pw_set(cfg.username, cfg.password)
        if cfg.tls_ca is not None:
            c.tls_set(
                ca_certs=None if cfg.tls_ca == "system" else cfg.tls_ca,
                certfile=cfg.tls_cert, keyfile=cfg.tls_key, cert_reqs=ssl.CERT_REQUIRED,
            )
        c.max_queued_messages_set(cfg.max_queued_messages)
        c.max_inflight_messages_set(100)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        return c

    def _connect(self, c: mqtt.Client, proto: int) -> None:
        if proto == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.config.session_expiry_s
            c.connect_async(self.config.host, self.config.port, self.config.keepalive_s,
                            clean_start=False, properties=props)
        else:
            c.connect_async(self.config.host, self.config.port, self.config.keepalive_s)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if client is not self._client:
            return  # a late callback of a client we already gave up on (the v5 probe)
        try:
            if reason_code.is_failure:
                code = reason_code.value
                self._probe_result = "unsupported" if code in (_UNSUPPORTED_PROTOCOL, 1) else str(reason_code)
                level = logging.INFO if self._probe_result == "unsupported" else logging.WARNING
                log.log(level, "%s: broker refused the connection: %s", self.client_id, reason_code)
                self._probe.set()
                return
            if properties is not None and hasattr(properties, "MaximumPacketSize"):
                self.broker_max_packet = int(properties.MaximumPacketSize)
            if self._ever_connected:
                self.reconnects += 1
                log.info("%s reconnected (session present: %s)", self.client_id, flags.session_present)
            self._ever_connected = True
            with self._lock:
                subs = list(self._subscriptions)
            for s in subs:
                client.subscribe(s, qos=1)
            self.connected.set()
            self._probe_result = "ok"
            self._probe.set()
        except Exception:  # never let an exception kill paho's network thread
            log.exception("%s: error in on_connect", self.client_id)

    def _on_connect_fail(self, client, userdata) -> None:
        # No connection (refused, no route): say so at once instead of waiting out the probe. paho calls this
        # inside its `except OSError`, so the error is at hand: a TLS failure (wrong CA, an expired or forged
        # certificate, TLS to a plain port) is a final answer, not a broker that is down. Later failures (paho
        # reconnecting after a loss) change nothing: the probe is over.
        if client is self._client and not self._probe.is_set():
            exc = sys.exc_info()[1]
            self._probe_result = f"TLS: {exc}" if isinstance(exc, ssl.SSLError) else None
            self._probe.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if client is not self._client:
            return
        was_connected = self.connected.is_set()
        self.connected.clear()
        if not self._probe.is_set():
            self._probe_result = "closed"
            self._probe.set()
        elif was_connected:
            log.warning("%s disconnected (%s); paho reconnects with backoff", self.client_id, reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        def ack() -> None:
            if self.manual_ack and msg.qos > 0:
                client.ack(msg.mid, msg.qos)

        handed_over = False
        try:
            self.bytes_in += len(msg.payload)
            if not msg.payload:
                return  # a cleared retained message
            try:
                # The reassembler holds a chunk's acknowledgement until its message is complete.
                got = self._reassembler.feed_held(msg.topic, msg.payload, ack)
            except MessageError as exc:
                self.rejected += 1
                log.warning("%s: dropped a frame on %s: %s", self.client_id, msg.topic, exc)
                return
            handed_over = True
            if got is not None:
                payload, acks = got

                def ack_all() -> None:
                    for a in acks:
                        a()

                handed_over = False
                self.on_message(msg.topic, payload, bool(msg.retain), ack_all)
                handed_over = True
        except Exception:  # the handler's bug must not kill the network thread
            log.exception("%s: error handling a message on %s", self.client_id, msg.topic)
        finally:
            if not handed_over:
                ack()

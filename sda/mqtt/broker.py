"""An embedded MQTT 3.1.1 broker for one-machine use (tests, the demo, a single Pi).

Why in-process: the demo and the tests need a broker without installing mosquitto; `amqtt` is a
pure-Python asyncio broker, so it runs in a daemon thread of our own process with its own event
loop, and paho clients in any thread talk to it over loopback TCP like to any other broker.

Why loopback only: there is no authentication or ACL here (DESIGN §6 enforces topic ownership with
mosquitto ACLs on the authenticated username). Anonymous access is allowed, which is acceptable only
because nothing off this machine can reach the listener; a non-loopback host is refused.

What amqtt 0.12 does differently from mosquitto, and what this module changes (see the tests):
- MQTT v5 is not spoken: a v5 CONNECT gets CONNACK 0x01 (unacceptable protocol version), then the
  socket is closed. Clients fall back to 3.1.1.
- amqtt's own anonymous-auth plugin marks every session anonymous, and amqtt then drops a persistent
  (clean_session=False) session's subscriptions and queued QoS>0 messages when the client leaves.
  We authenticate with `_OpenLoopbackAuth` instead, which accepts every client without marking it
  anonymous, so persistent sessions behave as MQTT 3.1.1 requires.
- amqtt has no maximum packet size (only the protocol's 256 MiB). `max_packet_bytes` adds one,
  like mosquitto's `max_packet_size`: a client sending a larger packet is disconnected, the packet
  is neither read into memory nor delivered.
- On every CONNECT amqtt replays the retained messages matching *any* client's filters to the new
  client, even one with no subscription. `_Broker` replays only the filters the client holds (a
  persistent session still gets its own filters' retained messages again on reconnect, at QoS 0).

State (sessions, queued and retained messages) lives in memory: `stop()` loses it. A restarted
instance binds the same port again, so clients reconnect to the same URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from typing import Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from sda.errors import TransportError

_LOG_NAMES = ("amqtt", "transitions")  # transitions: amqtt's state machines, chatty at INFO
_log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _OpenLoopbackAuth(BaseAuthPlugin):
    """Accept every client, and do not mark it anonymous (amqtt forgets anonymous persistent sessions)."""

    async def authenticate(self, *, session: Session) -> bool:
        return True


class _PrefixedReader(StreamReaderAdapter):
    """A reader that first hands back bytes already read from the stream (the peeked CONNECT)."""

    def __init__(self, reader: asyncio.StreamReader, prefix: bytes = b"") -> None:
        super().__init__(reader)
        self._prefix = prefix

    async def read(self, n: int = -1) -> bytes:
        if self._prefix:
            if n < 0 or n >= len(self._prefix):
                out, self._prefix = self._prefix, b""
            else:
                out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out
        return await super().read(n)


async def _peek_connect(reader: asyncio.StreamReader) -> tuple[bytes, int | None]:
    """Read a CONNECT's fixed header, protocol name and level: (bytes read, level or None)."""
    got = bytearray(await reader.readexactly(1))
    for _ in range(4):  # remaining length: 1 to 4 bytes
        b = await reader.readexactly(1)
        got += b
        if not b[0] & 0x80:
            break
    if got[0] != 0x10:
        return bytes(got), None
    head = await reader.readexactly(2)
    got += head
    name_len = int.from_bytes(head, "big")
    if name_len > 6:
        return bytes(got), None
    got += await reader.readexactly(name_len + 1)
    return bytes(got), got[-1]


class _GuardedReader(_PrefixedReader):
    """Reads a client's byte stream and disconnects it when a packet announces more than `limit` bytes.

    The check runs on the fixed header (type byte plus remaining length), before amqtt reads the body,
    so an oversized packet is never buffered or delivered. Counting is on the bytes read, whatever
    the read sizes, so it does not depend on how amqtt slices its reads.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int,
                 prefix: bytes = b"") -> None:
        super().__init__(reader, prefix)
        self._writer, self._limit = writer, limit
        self._in_header, self._remaining, self._mult, self._nlen, self._body_left = False, 0, 1, 0, 0
        self._closed = False

    async def read(self, n: int = -1) -> bytes:
        if self._closed:
            raise asyncio.IncompleteReadError(b"", n if n > 0 else None)
        data = await super().read(n)
        if not self._accept(data):
            # Looks to amqtt like the peer hung up: it ends the session the ordinary way.
            size = 1 + self._nlen + self._remaining
            _log.warning(
                "disconnecting %s: a %d-byte packet, over max_packet_bytes=%d",
                self._writer.get_extra_info("peername"),
                size,
                self._limit,
            )
            self._closed = True
            self._writer.transport.abort()
            raise asyncio.IncompleteReadError(b"", n if n > 0 else None)
        return data

    def _accept(self, data: bytes) -> bool:
        i = 0
        while i < len(data):
            if self._body_left:
                step = min(self._body_left, len(data) - i)
                self._body_left -= step
                i += step
                continue
            byte = data[i]
            i += 1
            if not self._in_header:  # packet type byte
                self._in_header, self._remaining, self._mult, self._nlen = True, 0, 1, 0
                continue
            self._remaining += (byte & 0x7F) * self._mult
            self._mult *= 128
            self._nlen += 1
            if not byte & 0x80:  # last remaining-length byte
                self._in_header = False
                if 1 + self._nlen + self._remaining > self._limit:
                    return False
                self._body_left = self._remaining
        return True


class _Broker(Broker):
    """amqtt's Broker plus the packet-size guard, own-filter retained replay, and a failed connection
    handler that drops its socket instead of leaving the client hanging."""

    def __init__(self, config: dict[str, Any], max_packet_bytes: int | None) -> None:
        super().__init__(config)
        self._max_packet_bytes = max_packet_bytes

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        # amqtt never answers an MQTT v5 CONNECT that carries properties, so a v5 client would wait
        # for its CONNACK until a timeout. Refuse v5 at once, the 3.1.1 way (return code 1), so
        # clients fall back to 3.1.1 without delay.
        try:
            prefix, level = await asyncio.wait_for(_peek_connect(reader), 10)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.transport.abort()
            return
        if level == 5:
            writer.write(b"\x20\x02\x00\x01")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        limit = self._max_packet_bytes
        adapter = (_PrefixedReader(reader, prefix) if limit is None
                   else _GuardedReader(reader, writer, limit, prefix))
        try:
            await self.external_connected(adapter, StreamWriterAdapter(writer), listener_name)
        except Exception:
            # Left to asyncio, the error is logged but (Python 3.11) the socket stays open and the
            # client waits for a CONNACK forever. Drop the connection instead.
            self.logger.exception("connection handler failed; dropping the connection")
            writer.transport.abort()

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt 0.12 calls this on every CONNECT for every topic filter of *any* client, so a client
        # with no subscription at all would get other clients' retained messages. Replay a filter's
        # retained messages only to a session that holds that filter.
        holders = self._subscriptions.get(subscription[0], ())
        if any(s.client_id == session.client_id for s, _ in holders):
            await super()._publish_retained_messages_for_subscription(subscription, session)


class EmbeddedBroker:
    """An amqtt broker on loopback, in a daemon thread with its own asyncio loop.

    Anonymous access is allowed: the listener is bound to loopback only, so only processes on this
    machine can connect. Use `port=0` (the default) to let the OS pick a free port, then read `port`
    or `url` after `start()`. Usable as a context manager (`with EmbeddedBroker() as b: ...`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_packet_bytes: int | None = None) -> None:
        if not isinstance(host, str) or not _is_loopback(host):
            raise ValueError(
                f"the embedded broker binds to loopback only (127.0.0.0/8, ::1, localhost): {host!r}"
            )
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        if max_packet_bytes is not None and (not isinstance(max_packet_bytes, int) or max_packet_bytes < 2):
            raise ValueError(f"max_packet_bytes must be None or an int >= 2, got {max_packet_bytes!r}")
        # "localhost" may resolve to both 127.0.0.1 and ::1, and port 0 would then give two ports.
        self._host = "127.0.0.1" if host.lower() == "localhost" else host
        self._port = port
        self._max_packet_bytes = max_packet_bytes
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the OS's pick once started, when constructed with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"mqtt://{host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float = 10) -> None:
        """Start the broker; return once its listener is bound and listening (so connects succeed)."""
        if self._thread is not None:
            raise TransportError("embedded broker already started")
        for name in _LOG_NAMES:  # quiet by default; an explicitly configured level is kept
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name=f"mqtt-broker-{self._host}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            with contextlib.suppress(TransportError):
                self.stop(timeout_s)
            raise TransportError(f"embedded broker on {self._host}:{self._port} not up within {timeout_s} s")
        if self._error is not None:
            self._thread.join(timeout_s)
            self._thread = None
            raise TransportError(
                f"embedded broker could not listen on {self._host}:{self._port}: {self._error}"
            ) from self._error

    def stop(self, timeout_s: float = 10) -> None:
        """Shut the broker down: clients are disconnected, the port is freed, the thread is joined."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile: the thread is ending anyway
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout_s)
        if thread.is_alive():
            raise TransportError(f"embedded broker on {self.url} did not stop in {timeout_s} s")
        self._thread = self._loop = self._stop_event = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to start() if it had not started yet
            if not self._ready.is_set():
                self._error = e
                self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        bind = f"{self._host}:{self._port}"  # amqtt splits on the last ':', so "::1:0" works unbracketed
        config = {
            "listeners": {"default": {"type": "tcp", "bind": bind}},
            "plugins": {f"{__name__}._OpenLoopbackAuth": {}},
        }
        broker = _Broker(config, self._max_packet_bytes)
        try:
            await broker.start()
            # asyncio.start_server has called listen() by now. With port 0, read the OS's pick.
            sockets = broker._servers["default"].instance.sockets
            self._port = sockets[0].getsockname()[1]
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await broker.shutdown()

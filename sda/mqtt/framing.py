"""Frames on the wire, and chunking for payloads above the broker's maximum packet size.

Every payload the transport publishes is one frame:
  0x00 | payload                                   a whole message
  0x01 | message id (16) | index (2) | count (2) | data    one chunk of a larger message
A `Reassembler` puts chunks back together with hard limits (message size, chunks, partial
messages held, age) so a flood of fragments cannot exhaust memory.
"""

from __future__ import annotations

import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import MessageError

WHOLE = 0x00
CHUNK = 0x01
_CHUNK_HEADER = struct.Struct(">B16sHH")
#: Bytes an MQTT PUBLISH needs besides the payload, with room for the topic and v5 properties.
PUBLISH_OVERHEAD = 512


def unframe(data: bytes) -> bytes:
    """The message in a saved whole frame (as a retained message is stored by the broker); bytes
    that are not a frame (an envelope saved by other means) are returned as they are."""
    if data[:1] == bytes([WHOLE]):
        return data[1:]
    if data[:1] == bytes([CHUNK]):
        raise MessageError("a chunk of a larger message, not a whole one")
    return data


def frame(payload: bytes, max_frame_bytes: int | None) -> list[bytes]:
    """One frame, or chunks of at most max_frame_bytes each when the payload is larger."""
    if max_frame_bytes is None or len(payload) + 1 <= max_frame_bytes:
        return [bytes([WHOLE]) + payload]
    step = max_frame_bytes - _CHUNK_HEADER.size
    if step < 1:
        raise ValueError(f"max_frame_bytes={max_frame_bytes} leaves no room for data")
    count = -(-len(payload) // step)
    if count > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes needs {count} chunks, over 65535")
    msg_id = os.urandom(16)
    return [
        _CHUNK_HEADER.pack(CHUNK, msg_id, i, count) + payload[i * step : (i + 1) * step]
        for i in range(count)
    ]


@dataclass
class _Partial:
    count: int
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    acks: list[Callable[[], None]] = field(default_factory=list)


#: A message of at most this many chunks has its chunks' acknowledgements held until the whole
#: message is handled; a larger one would fill the broker's window of unacknowledged messages
#: (Mosquitto's default max_inflight_messages is 20), so its chunks are acknowledged on arrival.
HOLD_ACKS_UP_TO = 8


class Reassembler:
    """Turns frames back into payloads. `feed` returns a payload when one is complete.

    Limits: max_message_bytes per message; max_per_topic partial messages per topic (one sender
    cannot evict another's); max_partial messages and max_total_bytes in all (oldest dropped);
    max_age_s before an incomplete message is dropped. A dropped message's held acknowledgements
    are released, so the broker's window does not stay full.
    """

    def __init__(self, max_message_bytes: int, max_partial: int = 256, max_age_s: float = 120.0,
                 max_per_topic: int = 2, max_total_bytes: int = 64 * 1024 * 1024):
        self.max_message_bytes = max_message_bytes
        self.max_partial = max_partial
        self.max_age_s = max_age_s
        self.max_per_topic = max_per_topic
        self.max_total_bytes = max_total_bytes
        self._partial: OrderedDict[tuple[str, bytes], _Partial] = OrderedDict()
        self._bytes = 0

    def feed(self, topic: str, data: bytes, now: float | None = None) -> bytes | None:
        """Consume one frame from `topic`; MessageError for a malformed or oversized one."""
        out = self.feed_held(topic, data, _noop, now)
        return None if out is None else out[0]

    def feed_held(self, topic: str, data: bytes, ack: Callable[[], None],
                  now: float | None = None) -> tuple[bytes, list[Callable[[], None]]] | None:
        """Like `feed`, with the frame's acknowledgement: returns (payload, the acknowledgements
        to call once the payload is handled), or None while the message is incomplete. On
        MessageError the caller acknowledges this frame itself."""
        now = time.monotonic() if now is None else now
        if not data:
            raise MessageError("empty frame")
        if data[0] == WHOLE:
            if len(data) - 1 > self.max_message_bytes:
                raise MessageError(f"message of {len(data) - 1} bytes over {self.max_message_bytes}")
            return data[1:], [ack]
        if data[0] != CHUNK or len(data) < _CHUNK_HEADER.size:
            raise MessageError(f"unknown frame type {data[0]} or short chunk header")
        _, msg_id, index, count = _CHUNK_HEADER.unpack_from(data)
        body = data[_CHUNK_HEADER.size :]
        if count < 2 or index >= count:
            raise MessageError(f"chunk {index} of {count} is not a valid position")
        self._expire(now)
        key = (topic, msg_id)
        part = self._partial.get(key)
        if part is None:
            same_topic = [k for k in self._partial if k[0] == topic]
            for k in same_topic[: max(0, len(same_topic) - self.max_per_topic + 1)]:
                self._drop(k)
            part = _Partial(count, now)
            self._partial[key] = part
            while len(self._partial) > self.max_partial:
                self._drop(next(iter(self._partial)))
        if part.count != count:
            self._drop(key)
            raise MessageError("chunks of one message disagree on their count")
        if index in part.parts:
            ack()
            return None  # a duplicate delivery (QoS 1): ignore
        part.parts[index] = body
        part.size += len(body)
        self._bytes += len(body)
        if count <= HOLD_ACKS_UP_TO:
            part.acks.append(ack)
        else:
            ack()
        if part.size > self.max_message_bytes:
            self._drop(key)
            raise MessageError(f"chunked message grows over {self.max_message_bytes} bytes")
        while self._bytes > self.max_total_bytes and len(self._partial) > 1:
            oldest = next(iter(self._partial))
            if oldest == key:
                break
            self._drop(oldest)
        if len(part.parts) < count:
            return None
        del self._partial[key]
        self._bytes -= part.size
        return b"".join(part.parts[i] for i in range(count)), part.acks

    def _drop(self, key: tuple[str, bytes]) -> None:
        part = self._partial.pop(key)
        self._bytes -= part.size
        for a in part.acks:
            a()

    def _expire(self, now: float) -> None:
        while self._partial:
            key, part = next(iter(self._partial.items()))
            if now - part.started <= self.max_age_s:
                break
            self._drop(key)

    @property
    def pending(self) -> int:
        """Incomplete messages held."""
        return len(self._partial)


def _noop() -> None:
    pass

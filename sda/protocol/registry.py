"""The device registry that participant sets are indexed by, and its snapshot hash."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from ..errors import ParameterError
from . import codec


@dataclass(frozen=True)
class RegistryEntry:
    """A registered device: its id and its public keys (Ed25519, X25519)."""

    device_id: str
    sign_key: bytes
    box_key: bytes


class Registry:
    """An immutable, ordered list of devices; the index of a device is its bit in a bitmap."""

    def __init__(self, entries: Sequence[RegistryEntry]):
        self.entries: tuple[RegistryEntry, ...] = tuple(entries)
        self._index = {e.device_id: i for i, e in enumerate(self.entries)}
        if len(self._index) != len(self.entries):
            raise ParameterError("registry names a device twice")

    def __len__(self) -> int:
        return len(self.entries)

    def index_of(self, device_id: str) -> int | None:
        """Registry index of a device, or None when not registered."""
        return self._index.get(device_id)

    def sign_key_of(self, device_id: str) -> bytes | None:
        """The device's Ed25519 key, or None when not registered."""
        i = self._index.get(device_id)
        return None if i is None else self.entries[i].sign_key

    @cached_property
    def box_keys(self) -> tuple[bytes, ...]:
        """X25519 keys in registry order."""
        return tuple(e.box_key for e in self.entries)

    @cached_property
    def snapshot_hash(self) -> bytes:
        """SHA-256 over the canonical encoding of every entry, in order."""
        h = hashlib.sha256(b"sda/v1/registry\x00")
        for e in self.entries:
            h.update(codec.pack([e.device_id, e.sign_key, e.box_key]))
        return h.digest()

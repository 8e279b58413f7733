"""Assembling signed, paged snapshots (registry and clerk snapshots travel as retained pages)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..errors import SdaError
from ..protocol.messages import Message, open_signed


class PageAssembler:
    """Collects the pages of `kind` messages (fields: page, pages, entries, and a hash field)
    signed by the coordinator, and keeps the last `keep` complete snapshots by hash."""

    def __init__(self, kind: type[Message], hash_field: str, key_of: Callable[[str], bytes | None], keep: int = 4):
        self.kind, self.hash_field, self.key_of, self.keep = kind, hash_field, key_of, keep
        self._pages: OrderedDict[bytes, dict[int, Any]] = OrderedDict()
        self.complete: OrderedDict[bytes, list] = OrderedDict()

    def feed(self, payload: bytes) -> bytes | None:
        """Take one page; returns the snapshot's hash once all its pages are here. SdaError if bad."""
        msg, _ = open_signed(payload, self.kind, self.key_of)
        h: bytes = getattr(msg, self.hash_field)
        if msg.page >= msg.pages:
            raise SdaError(f"page {msg.page} of {msg.pages}")
        if h in self.complete:
            return None
        pages = self._pages.setdefault(h, {})
        pages[msg.page] = msg
        while len(self._pages) > self.keep:
            self._pages.popitem(last=False)
        if len(pages) < msg.pages:
            return None
        entries = [e for i in range(msg.pages) for e in pages[i].entries]
        del self._pages[h]
        self.complete[h] = entries
        while len(self.complete) > self.keep:
            self.complete.popitem(last=False)
        return h

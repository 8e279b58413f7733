"""The participant client: how a device takes part in announced aggregations over MQTT.

The device supplies `provide(announce) -> vector | None` (None: not this time), and optionally
`recorded(announce)`, called once the participation computed from that vector is recorded and
before it is published (where a device commits what taking part cost it). Each
participation is recorded (with its envelope) before it is published; a device that restarts
re-publishes a recorded participation if the announce is still up (the server drops duplicates),
and never computes a second one for the same aggregation.

`recorded` is called again before each such re-publish, so it must be idempotent: a device killed
between recording a participation and committing its cost commits it then, before anything goes out.
A participation whose `recorded` raised is not published (it stays in the log, and goes out with the
next delivery of its announce, after `recorded` succeeded): nothing leaves the device uncommitted.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import committee, crypto
from ..errors import SdaError
from ..ledger import Receipt, verify_receipt
from ..mqtt import topics
from ..mqtt.transport import BrokerConfig, Transport
from ..protocol.messages import Announce, ClerkSnapshot, Registration, seal
from ..protocol.params import open_announce
from ..protocol.participant import Participant, ParticipantPolicy
from ..sqlite import connect_sqlite, transaction
from .pages import PageAssembler

log = logging.getLogger("sda.participant")


class _NotYet(SdaError):
    """The announce's clerk snapshot has not arrived yet."""


class ParticipationLog:
    """Which aggregations this device joined, and what it sent. In memory unless given a path."""

    def __init__(self, path: Path | None = None):
        self._lock = threading.Lock()
        self._mem: dict[str, bytes] = {}
        self._receipts: dict[int, tuple] = {}
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = connect_sqlite(Path(path))
            self._db.execute("CREATE TABLE IF NOT EXISTS participations (aggregation_id TEXT PRIMARY KEY,"
                             " envelope BLOB NOT NULL, sent_at REAL NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS receipts (entry_id INTEGER PRIMARY KEY, kind TEXT,"
                             " memo TEXT, amount INTEGER, available_after INTEGER, time REAL)")

    def envelope(self, aggregation_id: str) -> bytes | None:
        """What we sent for this aggregation, or None if we did not take part."""
        with self._lock:
            if self._db is None:
                return self._mem.get(aggregation_id)
            row = self._db.execute("SELECT envelope FROM participations WHERE aggregation_id=?",
                                   (aggregation_id,)).fetchone()
            return None if row is None else bytes(row[0])

    def record(self, aggregation_id: str, envelope: bytes) -> None:
        """Persist a participation (before it is published)."""
        with self._lock:
            if self._db is None:
                self._mem[aggregation_id] = envelope
                return
            with transaction(self._db):
                self._db.execute("INSERT INTO participations VALUES (?, ?, ?)",
                                 (aggregation_id, envelope, time.time()))

    def record_receipt(self, r: Receipt) -> None:
        """Keep a verified receipt (rewards for contributing): the owner's view of its tokens."""
        row = (r.entry_id, r.kind, r.memo, r.amount_available, r.available_after, r.time)
        with self._lock:
            if self._db is None:
                self._receipts[r.entry_id] = row
                return
            with transaction(self._db):
                self._db.execute("INSERT OR IGNORE INTO receipts VALUES (?, ?, ?, ?, ?, ?)", row)

    def wallet(self) -> tuple[int, list[dict]]:
        """(available tokens after the newest receipt, receipts newest first)."""
        names = ("entry_id", "kind", "memo", "amount", "available_after", "time")
        with self._lock:
            if self._db is None:
                rows = [self._receipts[k] for k in sorted(self._receipts, reverse=True)]
            else:
                rows = self._db.execute("SELECT * FROM receipts ORDER BY entry_id DESC").fetchall()
        history = [dict(zip(names, r, strict=True)) for r in rows]
        return (history[0]["available_after"] if history else 0), history

    def joined(self) -> set[str]:
        """Ids of every aggregation joined."""
        with self._lock:
            if self._db is None:
                return set(self._mem)
            return {r[0] for r in self._db.execute("SELECT aggregation_id FROM participations")}


@dataclass(frozen=True)
class ParticipantConfig:
    """A device's id, broker and trust anchor (the coordinator's signing key)."""

    device_id: str
    broker: BrokerConfig
    coordinator_id: str
    coordinator_sign_key: bytes
    policy: ParticipantPolicy = field(default_factory=ParticipantPolicy)


class ParticipantClient:
    """Takes part in announced aggregations. Work happens on the connection's own thread."""

    def __init__(self, config: ParticipantConfig, identity: crypto.Identity,
                 provide: Callable[[Announce], np.ndarray | None], log_: ParticipationLog | None = None,
                 recorded: Callable[[Announce], None] | None = None):
        self.config = config
        self.identity = identity
        self.provide = provide
        self.recorded = recorded
        self.log = log_ or ParticipationLog()
        self.participant = Participant(config.device_id, identity, config.policy,
                                       participated=self.log.joined(), committee_check=self._check_committee)
        self.clerk_pages = PageAssembler(
            ClerkSnapshot, "clerks_hash",
            lambda s: config.coordinator_sign_key if s == config.coordinator_id else None)
        self._deferred: dict[str, tuple[str, bytes]] = {}
        self.transport = Transport(config.device_id, config.broker, self._on_message)
        self.sent: list[str] = []
        self.refused: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self, timeout_s: float = 15.0) -> None:
        """Connect, publish the registration (retained) and listen for announces."""
        self.transport.start(timeout_s)
        pub = self.identity.public()
        reg = Registration(self.config.device_id, "device", pub.sign_key, pub.box_key)
        self.transport.publish(topics.registration(self.config.device_id),
                               seal(reg, self.config.device_id, self.identity), retain=True)
        self.transport.subscribe(topics.ALL_CLERK_PAGES)
        self.transport.subscribe(topics.ALL_ANNOUNCES)
        self.transport.subscribe(topics.inbox(self.config.device_id))

    def stop(self) -> None:
        """Disconnect."""
        self.transport.stop()

    def _on_message(self, topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
        parsed = topics.parse(topic)
        if parsed is None:
            return
        with self._lock:  # paho calls us from one thread, but a test may call directly
            if parsed.kind == "clerk_snapshot":
                try:
                    if self.clerk_pages.feed(payload) is not None:
                        for agg, (t, raw) in list(self._deferred.items()):
                            del self._deferred[agg]
                            self._on_announce(t, agg, raw)
                except SdaError as exc:
                    log.warning("%s refused a clerk snapshot page: %s", self.config.device_id, exc)
            elif parsed.kind == "announce":
                self._on_announce(topic, parsed.aggregation_id, payload)
            elif parsed.kind == "inbox" and parsed.party_id == self.config.device_id:
                try:
                    r = verify_receipt(payload, self.config.coordinator_id, self.config.coordinator_sign_key,
                                       self.config.device_id)
                except SdaError as exc:
                    log.warning("%s refused an inbox message: %s", self.config.device_id, exc)
                else:
                    self.log.record_receipt(r)

    def _check_committee(self, a: Announce) -> None:
        cands = self.clerk_pages.complete.get(a.clerks_hash)
        if cands is None:
            raise _NotYet()
        committee.verify(a, [committee.Candidate(*e) for e in cands])

    def _on_announce(self, topic: str, agg: str, payload: bytes) -> None:
        try:
            a = open_announce(payload, self.config.coordinator_id, self.config.coordinator_sign_key)
            if a.aggregation_id != agg:
                raise SdaError(f"announce of {a.aggregation_id!r} on the topic of {agg!r}")
        except SdaError as exc:
            self.refused[agg] = str(exc)
            log.warning("%s refused the announce on %s: %s", self.config.device_id, topic, exc)
            return
        if a.clerks_hash not in self.clerk_pages.complete:
            if len(self._deferred) < 16:
                self._deferred[agg] = (topic, payload)  # its clerk snapshot is still on the way
            return
        sent = self.log.envelope(agg)
        if sent is not None:  # joined before a restart: send the same bytes again, its cost committed first
            if time.time() <= a.participation_deadline and self._committed(a):
                self.transport.publish(topics.participation(agg, self.config.device_id), sent)
            return
        try:
            self.participant.check(a, time.time())
            x = self.provide(a)
            if x is None:
                return
            out = self.participant.participate(a, x, time.time())
        except SdaError as exc:
            self.refused[agg] = str(exc)
            log.warning("%s does not take part in %s: %s", self.config.device_id, agg, exc)
            return
        self.log.record(agg, out.envelope)
        if not self._committed(a):
            return
        self.transport.publish(topics.participation(agg, self.config.device_id), out.envelope)
        self.sent.append(agg)

    def _committed(self, a: Announce) -> bool:
        """Run the `recorded` hook; False (logged) when it failed: the participation is then kept, not sent."""
        if self.recorded is None:
            return True
        try:
            self.recorded(a)
        except Exception:  # kept in the log: it goes out with the announce's next delivery (a restart)
            log.exception("%s: the recorded hook failed for %s; the participation is kept, not sent",
                          self.config.device_id, a.aggregation_id)
            return False
        return True

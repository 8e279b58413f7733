"""The clerk daemon: registers its keys, takes jobs, answers each aggregation exactly once.

Clerk noise (noise_added_by = "clerks"): on the announce of an aggregation whose committee it sits on, the
clerk submits its noise share as a participation (sda.protocol.noise_participant), persisted before it is
published, so a restart re-sends the same participation and never draws a second share.

State (SQLite, WAL): the aggregations processed with the result sent for each (persisted before
the result is published, so a redelivered job gets the same result again and never a second
one), the pairwise keys derived so far (a restart stays warm), the registry snapshots and the
announces seen. The same class runs stand-alone (`sda clerk`) or inside the device service.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import committee, crypto
from ..errors import AlreadyProcessed, SdaError
from ..ledger import verify_receipt
from ..mqtt import topics
from ..mqtt.transport import BrokerConfig, Transport
from ..protocol.clerk import Clerk
from ..protocol.codec import pack, unpack
from ..protocol.messages import (
    Announce,
    ClerkJob,
    ClerkSnapshot,
    Envelope,
    Registration,
    RegistrySnapshot,
    open_signed,
    seal,
)
from ..protocol.noise_participant import NoiseParticipant, adds_clerk_noise
from ..protocol.params import open_announce
from ..protocol.registry import Registry, RegistryEntry
from ..sqlite import connect_sqlite, transaction
from .keys import load_or_create_identity
from .pages import PageAssembler

log = logging.getLogger("sda.clerk")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed (
    aggregation_id TEXT PRIMARY KEY, snapshot_hash BLOB NOT NULL, participants INTEGER NOT NULL,
    result BLOB NOT NULL, processed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pairwise (peer_box_key BLOB PRIMARY KEY, key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS registry_pages (
    registry_hash BLOB NOT NULL, page INTEGER NOT NULL, pages INTEGER NOT NULL, envelope BLOB NOT NULL,
    PRIMARY KEY (registry_hash, page));
CREATE TABLE IF NOT EXISTS registries (registry_hash BLOB PRIMARY KEY, size INTEGER NOT NULL, entries BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS announces (aggregation_id TEXT PRIMARY KEY, envelope BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS noise_sent (
    aggregation_id TEXT PRIMARY KEY, envelope BLOB NOT NULL, sent_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (
    entry_id INTEGER PRIMARY KEY, kind TEXT NOT NULL, memo TEXT NOT NULL, amount_available INTEGER NOT NULL,
    amount_staked INTEGER NOT NULL, available_after INTEGER NOT NULL, staked_after INTEGER NOT NULL,
    time REAL NOT NULL, envelope BLOB NOT NULL);
"""


@dataclass(frozen=True)
class ClerkConfig:
    """A clerk's identity, state and broker."""

    clerk_id: str
    state_dir: Path
    broker: BrokerConfig
    coordinator_id: str
    coordinator_sign_key: bytes


@dataclass
class ClerkStats:
    """Counters for status output and tests."""

    processed: int = 0
    resent: int = 0
    receipts: int = 0
    noise_sent: int = 0
    rejected: Counter = field(default_factory=Counter)


class ClerkService:
    """A clerk over MQTT. `start()` connects, registers and runs the worker thread."""

    def __init__(self, config: ClerkConfig,
                 tamper: Callable[[bytes], bytes] | None = None):
        """tamper: for tests of the defences only, rewrites the result envelope before sending."""
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.identity = load_or_create_identity(config.state_dir / "clerk.key")
        self.db = connect_sqlite(config.state_dir / "clerk.db")
        self.db.executescript(_SCHEMA)
        cached = {bytes(k): bytes(v) for k, v in self.db.execute("SELECT peer_box_key, key FROM pairwise")}
        self._persisted_keys = set(cached)
        self.pairwise = crypto.PairwiseKeys(self.identity.exchange, cached)
        self.clerk = Clerk(config.clerk_id, self.identity, config.coordinator_id,
                           config.coordinator_sign_key, self.pairwise, processed=set())
        contributed = {r[0] for r in self.db.execute("SELECT aggregation_id FROM noise_sent")}
        self.noise = NoiseParticipant(config.clerk_id, self.identity, self.pairwise, contributed)
        self._pending_noise: set[str] = set()
        self.transport = Transport(config.clerk_id, config.broker, self._enqueue, manual_ack=True)
        self.clerk_pages = PageAssembler(ClerkSnapshot, "clerks_hash", self._coordinator_key)
        self.inbox: queue.Queue = queue.Queue()
        self.stats = ClerkStats()
        self._pending_jobs: dict[str, bytes] = {}
        self._tamper = tamper
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        """Connect, publish the registration (retained), subscribe, start working."""
        self.transport.start(timeout_s)
        pub = self.identity.public()
        reg = Registration(self.config.clerk_id, "clerk", pub.sign_key, pub.box_key)
        self.transport.publish(topics.registration(self.config.clerk_id),
                               seal(reg, self.config.clerk_id, self.identity), retain=True)
        self.transport.subscribe(topics.ALL_REGISTRY_PAGES)
        self.transport.subscribe(topics.ALL_CLERK_PAGES)
        self.transport.subscribe(topics.ALL_ANNOUNCES)
        self.transport.subscribe(topics.jobs_of(self.config.clerk_id))
        self.transport.subscribe(topics.inbox(self.config.clerk_id))
        self._thread = threading.Thread(target=self._run, name=f"clerk-{self.config.clerk_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop working and disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.transport.stop()
        self.db.close()

    def _enqueue(self, topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
        self.inbox.put((topic, payload, ack))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload, ack = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._handle(topic, payload)
            except Exception:
                log.exception("%s: error handling %s", self.config.clerk_id, topic)
            ack()

    def _reject(self, reason: str, topic: str, exc: Exception | str) -> None:
        self.stats.rejected[reason] += 1
        log.warning("%s rejected %s on %s: %s", self.config.clerk_id, reason, topic, exc)

    def _handle(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        if parsed is None:
            return
        if parsed.kind == "registry_snapshot":
            self._on_registry(topic, payload)
        elif parsed.kind == "inbox" and parsed.party_id == self.config.clerk_id:
            self._on_inbox(topic, payload)
        elif parsed.kind == "clerk_snapshot":
            try:
                self.clerk_pages.feed(payload)
            except SdaError as exc:
                self._reject("clerk snapshot", topic, exc)
        elif parsed.kind == "announce":
            self._on_announce(topic, parsed.aggregation_id, payload)
        elif parsed.kind == "job" and parsed.party_id == self.config.clerk_id:
            self._on_job(topic, parsed.aggregation_id, payload)
        # Jobs still waiting for their announce or registry may be ready now.
        for agg, job in list(self._pending_jobs.items()):
            if self._ready(agg):
                del self._pending_jobs[agg]
                self._on_job(topics.job(self.config.clerk_id, agg), agg, job)
        for agg in list(self._pending_noise):
            self._add_noise(agg)

    def _on_inbox(self, topic: str, payload: bytes) -> None:
        """Keep every receipt that verifies: the clerk's own record of what it earned and lost."""
        try:
            r = verify_receipt(payload, self.config.coordinator_id, self.config.coordinator_sign_key,
                               self.config.clerk_id)
        except SdaError as exc:
            self._reject("inbox", topic, exc)  # a receipt that does not verify, or not a receipt
            return
        with transaction(self.db):
            self.db.execute("INSERT OR IGNORE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (r.entry_id, r.kind, r.memo, r.amount_available, r.amount_staked,
                             r.available_after, r.staked_after, r.time, payload))
        self.stats.receipts += 1

    def wallet(self) -> tuple[tuple[int, int], list[dict]]:
        """((available, staked) after the newest receipt, receipts newest first): what the device
        shows its owner, from verified receipts only."""
        rows = self.db.execute("SELECT entry_id, kind, memo, amount_available, amount_staked, available_after,"
                               " staked_after, time FROM receipts ORDER BY entry_id DESC").fetchall()
        names = ("entry_id", "kind", "memo", "amount_available", "amount_staked", "available_after",
                 "staked_after", "time")
        history = [dict(zip(names, r, strict=True)) for r in rows]
        bal = (history[0]["available_after"], history[0]["staked_after"]) if history else (0, 0)
        return bal, history

    def _coordinator_key(self, signer: str) -> bytes | None:
        return self.config.coordinator_sign_key if signer == self.config.coordinator_id else None

    def _on_registry(self, topic: str, payload: bytes) -> None:
        """Keep a signed page; once every page of a registry is here, assemble and check it."""
        try:
            snap, _ = open_signed(payload, RegistrySnapshot, self._coordinator_key)
            if snap.page >= snap.pages:
                raise SdaError(f"registry page {snap.page} of {snap.pages}")
        except SdaError as exc:
            return self._reject("registry", topic, exc)
        with transaction(self.db):
            self.db.execute("INSERT OR IGNORE INTO registry_pages VALUES (?, ?, ?, ?)",
                            (snap.registry_hash, snap.page, snap.pages, payload))
        rows = self.db.execute("SELECT page, envelope FROM registry_pages WHERE registry_hash=? ORDER BY page",
                               (snap.registry_hash,)).fetchall()
        if len(rows) < snap.pages:
            return None
        entries: list = []
        for _, env in rows:
            entries.extend(RegistrySnapshot.decode(Envelope.decode(bytes(env)).payload).entries)
        reg = Registry([RegistryEntry(*e) for e in entries])
        if reg.snapshot_hash != snap.registry_hash or len(reg) != snap.registry_size:
            return self._reject("registry", topic, "assembled registry does not match its hash")
        self._save_registry(reg)
        return None

    def _save_registry(self, reg: Registry) -> None:
        blob = pack([[e.device_id, e.sign_key, e.box_key] for e in reg.entries])
        with transaction(self.db):
            self.db.execute("INSERT OR IGNORE INTO registries VALUES (?, ?, ?)", (reg.snapshot_hash, len(reg), blob))
            self.db.execute("DELETE FROM registry_pages WHERE registry_hash=?", (reg.snapshot_hash,))

    def _on_announce(self, topic: str, aggregation_id: str, payload: bytes) -> None:
        try:
            a = open_announce(payload, self.config.coordinator_id, self.config.coordinator_sign_key)
            if a.aggregation_id != aggregation_id:
                raise SdaError(f"announce of {a.aggregation_id!r} on the topic of {aggregation_id!r}")
        except SdaError as exc:
            return self._reject("announce", topic, exc)
        with transaction(self.db):
            self.db.execute("INSERT OR IGNORE INTO announces VALUES (?, ?)", (aggregation_id, payload))
        if adds_clerk_noise(a) and a.member_index(self.config.clerk_id) is not None:
            self._add_noise(aggregation_id)
        return None

    def _add_noise(self, agg: str) -> None:
        """Submit (or re-send) this clerk's noise share for `agg`, once its committee is verified."""
        self._pending_noise.discard(agg)
        topic = topics.participation(agg, self.config.clerk_id)
        row = self.db.execute("SELECT envelope FROM noise_sent WHERE aggregation_id=?", (agg,)).fetchone()
        if row is not None:  # after a restart: the same share again, a duplicate the server ignores
            self.transport.publish(topic, bytes(row[0]))
            return
        a = self._announce(agg)
        if a is None:
            return
        if a.clerks_hash not in self.clerk_pages.complete:
            if len(self._pending_noise) < 64:
                self._pending_noise.add(agg)  # wait for the clerk snapshot to check the draw
            return
        try:
            # Noise only for a committee that is the verifiable draw: a round whose job we would refuse
            # anyway (sda.committee) gets no share of ours either.
            committee.verify(a, [committee.Candidate(*e) for e in self.clerk_pages.complete[a.clerks_hash]])
            out = self.noise.contribute(a, time.time())
        except AlreadyProcessed:
            return
        except SdaError as exc:
            return self._reject("noise", topic, exc)
        try:
            with transaction(self.db):  # persisted before it is sent
                self.db.execute("INSERT INTO noise_sent VALUES (?, ?, ?)", (agg, out.envelope, time.time()))
        except sqlite3.Error:
            self.noise.contributed.discard(agg)
            raise
        self.transport.publish(topic, out.envelope)
        self.stats.noise_sent += 1
        log.info("%s added its noise share to %s", self.config.clerk_id, agg)

    def _announce(self, agg: str) -> Announce | None:
        row = self.db.execute("SELECT envelope FROM announces WHERE aggregation_id=?", (agg,)).fetchone()
        if row is None:
            return None
        return Announce.decode(Envelope.decode(bytes(row[0])).payload)

    def _registry(self, registry_hash: bytes, size: int) -> Registry | None:
        """The registry with this hash: stored, or the first `size` entries of a larger one
        (the registry only grows, so an older snapshot is a prefix of every later one)."""
        row = self.db.execute("SELECT entries FROM registries WHERE registry_hash=?", (registry_hash,)).fetchone()
        if row is not None:
            return Registry([RegistryEntry(*e) for e in unpack(bytes(row[0]), "registry")])
        for (blob,) in self.db.execute("SELECT entries FROM registries WHERE size > ? ORDER BY size", (size,)):
            reg = Registry([RegistryEntry(*e) for e in unpack(bytes(blob), "registry")[:size]])
            if reg.snapshot_hash == registry_hash:
                self._save_registry(reg)
                return reg
        return None

    def _ready(self, agg: str) -> bool:
        a = self._announce(agg)
        return (a is not None and self._registry(a.registry_hash, a.registry_size) is not None
                and a.clerks_hash in self.clerk_pages.complete)

    def _on_job(self, topic: str, agg: str, payload: bytes) -> None:
        done = self.db.execute("SELECT snapshot_hash, result FROM processed WHERE aggregation_id=?",
                               (agg,)).fetchone()
        if done is not None:
            # Processed before: answer a redelivery with the same result, never a second one.
            try:
                job, _ = open_signed(payload, ClerkJob, self._coordinator_key)
            except SdaError as exc:
                return self._reject("job", topic, exc)
            if job.snapshot_hash != bytes(done[0]):
                return self._reject("job", topic, AlreadyProcessed(
                    f"{agg}: already processed for another participant set (split-set attempt?)"))
            self.transport.publish(topics.result(agg, self.config.clerk_id), bytes(done[1]))
            self.stats.resent += 1
            return None
        a = self._announce(agg)
        reg = self._registry(a.registry_hash, a.registry_size) if a is not None else None
        if a is None or reg is None or a.clerks_hash not in self.clerk_pages.complete:
            if len(self._pending_jobs) < 64:
                self._pending_jobs[agg] = payload  # wait for its announce / registry / clerk snapshot
            return None
        try:
            # A committee that is not the verifiable draw (or names a clerk in cool-down) is refused.
            committee.verify(a, [committee.Candidate(*e) for e in self.clerk_pages.complete[a.clerks_hash]])
            out = self.clerk.handle_job(a, payload, reg, time.time())
        except SdaError as exc:
            return self._reject("job", topic, exc)
        job = ClerkJob.decode(Envelope.decode(payload).payload)
        result = self._tamper(out.envelope) if self._tamper else out.envelope
        new_keys = [(k, v) for k, v in self.pairwise.cached.items() if k not in self._persisted_keys]
        try:
            with transaction(self.db):  # persisted before it is sent
                self.db.execute("INSERT INTO processed VALUES (?, ?, ?, ?, ?)",
                                (agg, job.snapshot_hash, out.participants, result, time.time()))
                self.db.executemany("INSERT OR IGNORE INTO pairwise VALUES (?, ?)", new_keys)
        except sqlite3.Error:
            # Not recorded, so not sent: the job may be computed again when it comes back.
            self.clerk.processed.discard(agg)
            raise
        self._persisted_keys.update(k for k, _ in new_keys)
        self.transport.publish(topics.result(agg, self.config.clerk_id), result)
        self.stats.processed += 1
        log.info("%s processed %s over %d participants", self.config.clerk_id, agg, out.participants)
        return None

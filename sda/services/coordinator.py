"""The coordinator daemon: registry, aggregation lifecycle, reveal; over MQTT, stored in SQLite.

Lifecycle of an aggregation (each step persisted before the next is published):
  pending -> announce (retained) -> collecting -> snapshot + clerk jobs -> computing
  -> reveal (or failed) ; the retained announce is cleared at the end.
All protocol decisions are made by `sda.protocol` objects; this module moves messages between
them, the store and the broker. A restart resumes every open aggregation from the store;
participations are acknowledged to the broker only after they are committed (manual QoS 1 ack),
so a crash loses none of them.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import committee as committee_draw
from .. import crypto
from ..errors import AlreadyProcessed, SdaError, StorageError
from ..ledger import SYSTEM_PARTIES, TREASURY, Ledger
from ..mqtt import topics
from ..mqtt.transport import BrokerConfig, Transport
from ..protocol.messages import (
    REGISTRY_PAGE,
    Announce,
    ClerkSnapshot,
    CommitteeMember,
    Envelope,
    Registration,
    RegistrySnapshot,
    open_signed,
    seal,
)
from ..protocol.noise_participant import noise_sign_keys
from ..protocol.recipient import Recipient
from ..protocol.registry import Registry, RegistryEntry
from ..protocol.server import Server, new_announce
from ..protocol.snapshot import decode_bitmap
from ..simulation import default_thresholds
from .keys import load_or_create_identity
from .ledger_api import LedgerRequest, LedgerResponse
from .storage import OPEN_STATES, CoordinatorStore, SqliteStore

log = logging.getLogger("sda.coordinator")

#: Messages waiting for the worker. Past this, new ones are dropped unacknowledged: QoS 1
#: messages come back after a reconnect, a QoS 0 flood is simply shed.
INBOX_LIMIT = 20_000
#: Consecutive errors in one aggregation's step before it is marked failed (never stuck forever).
MAX_TICK_ERRORS = 5


@dataclass(frozen=True)
class AggregationSpec:
    """What the developer asks to be summed, and how long each phase may take."""

    aggregation_id: str
    dimension: int
    scale: float = 1.0
    clip_lo: float = -1.0
    clip_hi: float = 1.0
    k: int | None = None
    t: int | None = None
    committee_size: int | None = None  # default: every registered clerk
    collect_s: float = 60.0
    results_s: float = 60.0
    min_participants: int = 10
    max_participants: int | None = None
    close_when_complete: bool = True  # stop collecting once every registered device took part
    reward_per_participant: int = 0
    # DP noise the announce states (sda.protocol.params checks them); the defaults announce none.
    p: int | None = None  # the field's modulus (None: sda.field.P_DEFAULT)
    noise_mechanism: str = "none"
    noise_added_by: str = "none"
    noise_sigma: float = 0.0
    noise_headroom: int = 0
    # What the revealed coordinates mean, for reports (sda.services.report): one name per coordinate, or none;
    # and the (epsilon, delta) the requester states for the release. sda only stores and shows them: the
    # accounting needs the input ranges, which the product knows and sda does not.
    labels: tuple[str, ...] = ()
    dp_epsilon: float | None = None
    dp_delta: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))  # a list after a JSON round trip
        if self.labels and len(self.labels) != self.dimension:
            raise SdaError(f"aggregation {self.aggregation_id}: {len(self.labels)} labels for dimension"
                           f" {self.dimension}; give one per coordinate or none")


@dataclass(frozen=True)
class CoordinatorConfig:
    """Where the coordinator keeps its state and how it reaches the broker."""

    state_dir: Path
    broker: BrokerConfig
    coordinator_id: str = "coordinator"
    client_id: str | None = None
    ingest_only: bool = False  # a worker: validates and stores participations, nothing else
    shared_group: str | None = None  # MQTT v5 shared subscription group for participations
    tick_s: float = 0.2
    job_resend_s: float = 5.0
    # Tokens (DESIGN §5). grant_stake: minted and staked for each new clerk (demos and tests; in
    # production clerks stake what they hold). Penalties: a clerk that misses the deadline loses
    # late_slash of its stake and sits out cooldown_rounds; one named by error correction loses
    # wrong_slash and is excluded.
    treasury: int = 1_000_000_000
    grant_stake: int = 0
    device_reward: int = 0
    late_slash: float = 0.05
    cooldown_rounds: int = 2
    wrong_slash: float = 0.5


@dataclass
class CoordinatorStats:
    """Counters for status output and benchmarks."""

    accepted: int = 0
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)
    first_accept: float | None = None
    last_accept: float | None = None


class Coordinator:
    """The coordinator service. `start()` connects and runs its worker thread."""

    def __init__(self, config: CoordinatorConfig, store: CoordinatorStore | None = None):
        self.config = config
        self.cid = config.coordinator_id
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.identity = load_or_create_identity(config.state_dir / "coordinator.key")
        self.store: CoordinatorStore = store or SqliteStore(config.state_dir / "coordinator.db")
        self.ledger = None if config.ingest_only else Ledger(config.state_dir / "ledger.db")
        self.inbox: queue.Queue = queue.Queue(maxsize=INBOX_LIMIT)
        self.transport = Transport(config.client_id or self.cid, config.broker, self._enqueue, manual_ack=True)
        self.stats = CoordinatorStats()
        self._announces: dict[str, Announce] = {}
        self._registries: dict[bytes, Registry] = {}
        self._recipients: dict[str, Recipient] = {}
        self._ingest: dict[str, Server] = {}
        self._jobs_sent_at: dict[str, float] = {}
        self._published_registry: bytes | None = None
        self._published_clerks: bytes | None = None
        self._pending_rows: list[tuple[str, str, bytes, bytes]] = []
        self._tick_errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_finished: Callable[[str], None] | None = None
        # Called once connected and resumed, before the worker starts: a product republishes its retained
        # state here (the broker may have lost it while we were down).
        self.on_started: Callable[[], None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout_s: float = 15.0) -> None:
        """Connect, subscribe, resume open aggregations and start the worker thread."""
        self.transport.start(timeout_s)
        parts = topics.ALL_PARTICIPATIONS
        if self.config.shared_group:
            parts = topics.shared(self.config.shared_group, parts)
        self.transport.subscribe(parts)
        if not self.config.ingest_only:
            assert self.ledger is not None
            self.ledger.mint(TREASURY, self.config.treasury, "genesis", key="genesis/treasury")
            self.transport.subscribe(topics.ALL_REGISTRATIONS)
            self.transport.subscribe(topics.ALL_RESULTS)
            self.transport.subscribe(topics.ALL_LEDGER_REQUESTS)
            self._resume()
            if self.on_started is not None:
                self.on_started()
        self._thread = threading.Thread(target=self._run, name=f"coordinator-{self.cid}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker and disconnect (all state is already in the store)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.transport.stop()
        self.store.close()
        if self.ledger is not None:
            self.ledger.close()

    def request(self, spec: AggregationSpec) -> bool:
        """Queue an aggregation; it is announced on the next tick. False if the id exists."""
        return self.store.create_aggregation(spec.aggregation_id, asdict(spec))

    def public_keys(self) -> crypto.PublicIdentity:
        """The coordinator's public keys (provisioned to devices and clerks)."""
        return self.identity.public()

    # --- the worker loop ---------------------------------------------------------------------

    def _enqueue(self, topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
        try:
            self.inbox.put_nowait((topic, payload, ack))
        except queue.Full:
            self.stats.rejected["inbox full"] += 1

    def _run(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            batch = self._take_batch()
            stored = True
            for topic, payload, _ in batch:
                try:
                    self._handle(topic, payload)
                except (StorageError, sqlite3.Error):
                    stored = False
                    log.exception("could not store what came on %s", topic)
                except Exception:  # a bug must not stop the service; the message is dropped
                    log.exception("error handling %s", topic)
            if batch and stored:
                try:
                    self._commit_participations()
                except Exception:
                    log.exception("could not store a batch of %d messages", len(batch))
                    stored = False
            if not stored:
                # Nothing of this batch is acknowledged. Forget what the ingest objects saw and
                # reconnect, so the broker redelivers the batch and it is validated afresh.
                self._pending_rows.clear()
                self._ingest.clear()
                time.sleep(1.0)
                self.transport.redeliver_unacknowledged()
                continue
            for _, _, ack in batch:  # only now does the broker forget them
                ack()
            now = time.time()
            if now >= next_tick:
                next_tick = now + self.config.tick_s
                try:
                    if self.config.ingest_only:
                        self._prune_ingest()
                    else:
                        self._tick(now)
                except Exception:
                    log.exception("error in the coordinator tick")

    def _prune_ingest(self) -> None:
        """Drop the in-memory ingest state and announces of rounds no longer collecting (a worker has no tick,
        and never finishes a round)."""
        for agg in set(self._ingest) | set(self._announces):
            row = self.store.aggregation(agg)
            if row is None or row.state != "collecting":
                self._ingest.pop(agg, None)
                self._announces.pop(agg, None)

    def _take_batch(self, limit: int = 512) -> list[tuple[str, bytes, Callable[[], None]]]:
        """Everything queued (up to `limit`), waiting up to one tick for the first message."""
        try:
            batch = [self.inbox.get(timeout=self.config.tick_s)]
        except queue.Empty:
            return []
        while len(batch) < limit:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _commit_participations(self) -> None:
        """Store the batch's accepted participations in one transaction (group commit)."""
        rows, self._pending_rows = self._pending_rows, []
        if not rows:
            return
        many = getattr(self.store, "add_participations", None)
        fresh = many(rows) if many else [self.store.add_participation(*r) for r in rows]
        now = time.time()
        for is_new in fresh:
            if is_new:
                self.stats.accepted += 1
                self.stats.first_accept = self.stats.first_accept or now
                self.stats.last_accept = now
            else:
                self.stats.duplicates += 1

    def _reject(self, reason: str, topic: str, exc: Exception | str) -> None:
        self.stats.rejected[reason] += 1
        log.warning("rejected %s on %s: %s", reason, topic, exc)

    def _handle(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        if parsed is None:
            return self._reject("topic", topic, "not an sda topic")
        if parsed.kind == "participation":
            return self._on_participation(topic, parsed.aggregation_id, parsed.party_id, payload)
        if self.config.ingest_only:
            return None
        if parsed.kind == "registration":
            return self._on_registration(topic, parsed.party_id, payload)
        if parsed.kind == "result":
            return self._on_result(topic, parsed.aggregation_id, parsed.party_id, payload)
        if parsed.kind == "ledger_request":
            return self._on_ledger_request(topic, parsed.party_id, payload)
        return None  # our own announces, jobs, snapshots echo back on sda/v1/#: ignore

    # --- registrations -----------------------------------------------------------------------

    def _on_registration(self, topic: str, party_id: str, payload: bytes) -> None:
        try:
            env = Envelope.decode(payload)
            reg = Registration.decode(env.payload)
            env.verify(reg.sign_key)
            if not (env.signer == reg.party_id == party_id):
                raise SdaError(f"registration of {reg.party_id!r} signed by {env.signer!r} on {party_id!r}")
            crypto.check_box_key(reg.box_key)
            if self.store.add_party(reg.party_id, reg.role, reg.sign_key, reg.box_key):
                log.info("registered %s %s", reg.role, reg.party_id)
            if reg.role == "clerk" and self.config.grant_stake and self.ledger is not None:
                g = self.config.grant_stake
                self._receipt(self.ledger.mint(reg.party_id, g, "grant", key=f"grant/{reg.party_id}"))
                self._receipt(self.ledger.stake(reg.party_id, g, key=f"grant-stake/{reg.party_id}"))
        except (SdaError, StorageError) as exc:
            self._reject("registration", topic, exc)

    def registry(self) -> Registry:
        """The current device registry (registration order; a later snapshot extends it)."""
        devices = self.store.parties("device")
        return Registry([RegistryEntry(p.party_id, p.sign_key, p.box_key) for p in devices])

    def _registry_for(self, a: Announce) -> Registry:
        reg = self._registries.get(a.registry_hash)
        if reg is None:
            devices = self.store.parties("device")[: a.registry_size]
            reg = Registry([RegistryEntry(p.party_id, p.sign_key, p.box_key) for p in devices])
            if reg.snapshot_hash != a.registry_hash:
                raise StorageError(f"{a.aggregation_id}: stored registry does not match its announce")
            self._registries[a.registry_hash] = reg
        return reg

    def _publish_registry(self, reg: Registry) -> None:
        if self._published_registry == reg.snapshot_hash:
            return
        self._publish_pages(RegistrySnapshot, topics.registry_snapshot, reg.snapshot_hash,
                            [(e.device_id, e.sign_key, e.box_key) for e in reg.entries])
        self._registries[reg.snapshot_hash] = reg
        self._published_registry = reg.snapshot_hash

    # --- participations ----------------------------------------------------------------------

    def _announce_of(self, aggregation_id: str) -> Announce | None:
        a = self._announces.get(aggregation_id)
        if a is None:
            row = self.store.aggregation(aggregation_id)
            if row is None or row.announce is None:
                return None
            a = Announce.decode(Envelope.decode(row.announce).payload)
            self._announces[aggregation_id] = a
        return a

    def _on_participation(self, topic: str, aggregation_id: str, device_id: str, payload: bytes) -> None:
        # The state first: a late or replayed participation must not load a finished round's announce back
        # into the cache (the soak's intruder grew it by one announce per stale message).
        row = self.store.aggregation(aggregation_id)
        if row is None or row.announce is None:
            return self._reject("participation", topic, f"unknown aggregation {aggregation_id!r}")
        if row.state != "collecting":
            self._ingest.pop(aggregation_id, None)
            return self._reject("participation", topic, f"{aggregation_id} is not collecting")
        a = self._announce_of(aggregation_id)
        if a is None:  # the row has one: only a store changed under us gets here
            return self._reject("participation", topic, f"unknown aggregation {aggregation_id!r}")
        if not self._signed_by(topic, payload, device_id, "participation"):
            return None
        server = self._ingest.get(aggregation_id)
        if server is None:
            server = Server(a, self._registry_for(a), recipient=self.identity)
            self._ingest[aggregation_id] = server
        try:
            dev = server.accept(payload, time.time())
        except AlreadyProcessed:
            self.stats.duplicates += 1
            return None
        except SdaError as exc:
            return self._reject("participation", topic, exc)
        shares, seed = server.stored(dev)
        self._pending_rows.append((aggregation_id, dev, shares, seed))
        return None

    # --- results -----------------------------------------------------------------------------

    def _on_result(self, topic: str, aggregation_id: str, clerk_id: str, payload: bytes) -> None:
        if not self._signed_by(topic, payload, clerk_id, "result"):
            return None
        rec = self._recipients.get(aggregation_id)
        if rec is None:
            return self._reject("result", topic, f"{aggregation_id} is not waiting for results")
        try:
            rec.add_result(payload, time.time())
        except AlreadyProcessed:
            return None
        except SdaError as exc:
            return self._reject("result", topic, exc)
        self.store.add_result(aggregation_id, clerk_id, payload)
        return None

    def _signed_by(self, topic: str, payload: bytes, party_id: str, what: str) -> bool:
        """The envelope names the party whose topic it came on (the broker authenticated that
        party); anything else is a replay or a forgery through someone else's topic."""
        try:
            env = Envelope.decode(payload)
        except SdaError as exc:
            self._reject(what, topic, exc)
            return False
        if env.signer != party_id:
            self._reject(what, topic, f"signed as {env.signer!r} but published by {party_id!r}")
            return False
        return True

    # --- the tick: deadlines and transitions ---------------------------------------------------

    def _tick(self, now: float) -> None:
        for row in self.store.aggregations(OPEN_STATES):
            agg = row.aggregation_id
            try:  # one aggregation's trouble must not hold up the others
                if row.state == "pending":
                    self._try_announce(agg, row.spec, now)
                elif row.state in ("collecting", "closing"):
                    self._maybe_close(agg, row.spec, now, closing=row.state == "closing")
                elif row.state == "computing":
                    self._maybe_reveal(agg, now)
                self._tick_errors.pop(agg, None)
            except Exception as exc:
                n = self._tick_errors[agg] = self._tick_errors.get(agg, 0) + 1
                log.exception("aggregation %s: error %d in its %s step", agg, n, row.state)
                if n >= MAX_TICK_ERRORS:
                    self._finish(agg, "failed", None, f"gave up after {n} errors: {exc}")

    def _try_announce(self, agg: str, spec: dict, now: float) -> None:
        s = AggregationSpec(**spec)
        assert self.ledger is not None
        # A count, not every row: loading each past round's announce and result here made the soak's
        # coordinator grow with the number of rounds it had run.
        round_number = 1 + self.store.announced_count()
        cands = self._candidates(round_number)
        drawable = sum(1 for c in cands if c.eligible and c.stake > 0)
        n = min(s.committee_size or drawable, drawable)
        reg = self.registry()
        if n < 3 or len(reg) < s.min_participants:
            return  # wait for enough staked clerks and devices to register
        clerks_hash = committee_draw.snapshot_hash(cands)
        drawn = committee_draw.select(clerks_hash, agg, cands, n)
        k, t = (s.k, s.t) if s.k and s.t else default_thresholds(n)
        committee = tuple(CommitteeMember(c.clerk_id, c.sign_key, c.box_key, i + 1)
                          for i, c in enumerate(drawn))
        try:
            a = new_announce(
                aggregation_id=agg, coordinator_id=self.cid, k=k, t=t, committee=committee,
                recipient_key=self.identity.public().box_key, registry=reg, dimension=s.dimension,
                scale=s.scale, clip_lo=s.clip_lo, clip_hi=s.clip_hi,
                participation_deadline=now + s.collect_s, result_deadline=now + s.collect_s + s.results_s,
                min_participants=s.min_participants,
                max_participants=min(s.max_participants or len(reg), len(reg)),
                reward_per_participant=s.reward_per_participant,
                clerks_hash=clerks_hash, round_number=round_number,
                noise_mechanism=s.noise_mechanism, noise_added_by=s.noise_added_by, noise_sigma=s.noise_sigma,
                noise_headroom=s.noise_headroom, **({"p": s.p} if s.p is not None else {}),
            )
        except SdaError as exc:
            log.error("aggregation %s cannot be announced: %s", agg, exc)
            self.store.finish(agg, "failed", None, f"cannot announce: {exc}")
            return
        self._publish_registry(reg)
        self._publish_clerks(cands, clerks_hash)
        for c in drawn:  # their stake stays put until this round ends
            self.ledger.lock(c.clerk_id, agg)
        env = seal(a, self.cid, self.identity)
        self.store.set_announced(agg, env)
        self._announces[agg] = a
        self.transport.publish(topics.announce(agg), env, retain=True)
        log.info("announced %s: d=%d, n=%d (k=%d, t=%d), %d devices registered",
                 agg, s.dimension, n, k, t, len(reg))

    def _maybe_close(self, agg: str, spec: dict, now: float, closing: bool = False) -> None:
        a = self._announce_of(agg)
        if a is None:
            return
        if not closing:
            # The count includes the n noise participations when clerks add noise: complete means every
            # device and every clerk's noise is in (a round closed before the noise could not be computed).
            count = self.store.participation_count(agg)
            expected = a.max_participants + len(noise_sign_keys(a))
            complete = spec.get("close_when_complete", True) and count >= expected
            if now < a.participation_deadline and not complete:
                return
            # First stop every ingest (here and in other workers) from storing more, then read:
            # so the snapshot holds exactly what was stored.
            self.store.close_collection(agg)
        # The snapshot is taken from the store, so ingest workers and restarts agree on S; the
        # first max_participants to arrive are in (workers each count only what they saw).
        server = Server(a, self._registry_for(a))
        stored = self.store.participations(agg)
        noise = [row for row in stored if server.is_noise_participant(row[0])]
        devices = [row for row in stored if not server.is_noise_participant(row[0])]
        for device_id, shares, seed in devices[: a.max_participants] + noise:
            server.restore(device_id, shares, seed)
        try:
            snap = server.snapshot()
        except SdaError as exc:
            log.warning("aggregation %s abandoned: %s", agg, exc)
            self._finish(agg, "failed", None, str(exc))
            return
        jobs = server.jobs(self.cid, self.identity)
        self.store.set_snapshot(agg, snap.hash, snap.bitmap, jobs)
        self._ingest.pop(agg, None)
        self._recipients[agg] = Recipient(self.identity, a, snap.hash, snap.sealed_seeds, snap.noise_seeds)
        self._send_jobs(agg, jobs, now)
        log.info("snapshot of %s: %d participants (+%d noise); jobs sent to %d clerks", agg, len(snap.participants),
                 len(snap.noise_seeds), len(jobs))

    def _send_jobs(self, agg: str, jobs: list[tuple[str, bytes]], now: float) -> None:
        for clerk_id, env in jobs:
            self.transport.publish(topics.job(clerk_id, agg), env)
        self._jobs_sent_at[agg] = now

    def _maybe_reveal(self, agg: str, now: float) -> None:
        a = self._announce_of(agg)
        rec = self._recipients.get(agg)
        if a is None or rec is None:
            return
        if rec.result_count < a.n and now < a.result_deadline:
            if now - self._jobs_sent_at.get(agg, 0) >= self.config.job_resend_s:
                answered = {c for c, _ in self.store.results(agg)}
                missing = [(c, e) for c, e in self.store.jobs(agg) if c not in answered]
                self._send_jobs(agg, missing, now)
            return
        try:
            rev = rec.reveal()
        except SdaError as exc:
            log.warning("aggregation %s failed at reveal: %s", agg, exc)
            answered = tuple(c for c, _ in self.store.results(agg))
            self._settle(a, answered, (), [], paid=False)
            self._finish(agg, "failed", None, str(exc))
            return
        self._settle(a, rev.clerks_used, rev.wrong_clerks,
                     [d for d, _ in rec.sealed_seeds] if self.config.device_reward else [])
        result = {
            "values": rev.values.tolist(),
            "field_sum": [int(v) for v in np.asarray(rev.field_sum)],
            "participants": rev.participants,  # devices: the divisor of a mean
            "noise_participants": rev.noise_participants,  # clerks whose noise shares are in the sum
            "clerks_used": list(rev.clerks_used),
            "wrong_clerks": list(rev.wrong_clerks),
            "revealed_at": now,
        }
        self._finish(agg, "revealed", result, None)
        log.info("revealed %s: %d participants, %d results, wrong clerks %s",
                 agg, rev.participants, len(rev.clerks_used), list(rev.wrong_clerks))

    def _finish(self, agg: str, state: str, result: dict | None, error: str | None) -> None:
        if self.ledger is not None:
            self.ledger.unlock_all(agg)
        self.store.finish(agg, state, result, error)
        self._recipients.pop(agg, None)
        self._ingest.pop(agg, None)
        self._announces.pop(agg, None)  # a finished round's announce is read from the store if ever needed
        self._jobs_sent_at.pop(agg, None)
        self.transport.clear_retained(topics.announce(agg))
        if self.on_finished is not None:
            self.on_finished(agg)

    # --- tokens ------------------------------------------------------------------------------

    def _candidates(self, round_number: int) -> list[committee_draw.Candidate]:
        """Every registered clerk with its stake and whether it may be drawn this round."""
        assert self.ledger is not None
        stakes = self.ledger.stakes()
        return [committee_draw.Candidate(p.party_id, p.sign_key, p.box_key, stakes.get(p.party_id, 0),
                                         self.ledger.eligible(p.party_id, round_number))
                for p in sorted(self.store.parties("clerk"), key=lambda p: p.party_id)]

    def _publish_clerks(self, cands: list[committee_draw.Candidate], clerks_hash: bytes) -> None:
        if self._published_clerks == clerks_hash:
            return
        self._publish_pages(ClerkSnapshot, topics.clerk_snapshot, clerks_hash,
                            [(c.clerk_id, c.sign_key, c.box_key, c.stake, c.eligible) for c in cands])
        self._published_clerks = clerks_hash

    def _publish_pages(self, kind, topic_of, snapshot_hash: bytes, entries: list) -> None:
        """A snapshot as signed retained pages of REGISTRY_PAGE entries (kind: RegistrySnapshot or
        ClerkSnapshot, whose fields are coordinator, hash, count, page, pages, entries)."""
        pages = -(-len(entries) // REGISTRY_PAGE)
        for page in range(pages):
            msg = kind(self.cid, snapshot_hash, len(entries), page, pages,
                       tuple(entries[page * REGISTRY_PAGE : (page + 1) * REGISTRY_PAGE]))
            self.transport.publish(topic_of(page), seal(msg, self.cid, self.identity), retain=True)

    def _settle(self, a: Announce, answered: tuple[str, ...], wrong: tuple[str, ...], devices: list[str],
                paid: bool = True) -> None:
        """Rewards and penalties of a finished round. Every entry has a key, so a coordinator that
        restarts half way through settles each party exactly once."""
        assert self.ledger is not None
        agg, cfg = a.aggregation_id, self.config
        for m in a.committee:
            c = m.clerk_id
            try:
                if c in wrong:
                    self._receipt(self.ledger.slash(c, cfg.wrong_slash, f"wrong result in {agg}",
                                                    key=f"slash-wrong/{agg}/{c}"))
                    self.ledger.exclude(c)
                elif c not in answered:
                    self._receipt(self.ledger.slash(c, cfg.late_slash, f"missed the deadline of {agg}",
                                                    key=f"slash-late/{agg}/{c}"))
                    self.ledger.set_cooldown(c, a.round_number + 1 + cfg.cooldown_rounds)
                elif paid and a.reward_per_participant:
                    n = len(self._recipients[agg].sealed_seeds) if agg in self._recipients else 0
                    self._receipt(self.ledger.reward(c, a.reward_per_participant * n, f"processed {agg}",
                                                     key=f"reward/{agg}/{c}"))
            except SdaError as exc:
                log.error("settling %s for %s: %s", agg, c, exc)
        for d in devices:
            try:
                self._receipt(self.ledger.reward(d, cfg.device_reward, f"contributed to {agg}",
                                                 key=f"device-reward/{agg}/{d}"))
            except SdaError as exc:
                log.error("rewarding %s for %s: %s", d, agg, exc)

    def _receipt(self, entry) -> None:
        """Publish the entry's signed receipt to the inbox of every party it touches."""
        assert self.ledger is not None
        for party in sorted({p for p, _, _ in entry.postings} - SYSTEM_PARTIES):
            r = self.ledger.receipt_for(entry, party)
            self.transport.publish(topics.inbox(party), seal(r, self.cid, self.identity))

    def _on_ledger_request(self, topic: str, party_id: str, payload: bytes) -> None:
        if not self._signed_by(topic, payload, party_id, "ledger request"):
            return None
        assert self.ledger is not None
        keys = {p.party_id: p.sign_key for p in self.store.parties()}
        try:
            req, _ = open_signed(payload, LedgerRequest, keys.get)
        except SdaError as exc:
            return self._reject("ledger request", topic, exc)
        ok, error, receipts = True, "", []
        try:
            if req.op == "stake":
                e = self.ledger.stake(party_id, req.amount, key=f"req/{party_id}/{req.request_id}")
                receipts = [self.ledger.receipt_for(e, party_id)]
            elif req.op == "unstake":
                e = self.ledger.unstake(party_id, req.amount, key=f"req/{party_id}/{req.request_id}")
                receipts = [self.ledger.receipt_for(e, party_id)]
            elif req.op == "history":
                receipts = [self.ledger.receipt_for(e, party_id) for e in self.ledger.history(party_id, 50)]
        except SdaError as exc:
            ok, error = False, str(exc)[:500]
        bal = self.ledger.balance(party_id)
        resp = LedgerResponse(party_id, req.request_id, ok, error, bal.available, bal.staked,
                              tuple(seal(r, self.cid, self.identity) for r in receipts))
        self.transport.publish(topics.inbox(party_id), seal(resp, self.cid, self.identity))
        return None

    # --- restart -----------------------------------------------------------------------------

    def _resume(self) -> None:
        if self.store.parties("device"):
            self._publish_registry(self.registry())  # it may not have left before a crash
        week_ago = time.time() - 7 * 86400
        for row in self.store.aggregations(("revealed", "failed")):
            if row.updated_at > week_ago and row.announce is not None:
                self.transport.clear_retained(topics.announce(row.aggregation_id))
        for row in self.store.aggregations(OPEN_STATES):
            if row.state == "collecting" and row.announce is not None:
                self.transport.publish(topics.announce(row.aggregation_id), row.announce, retain=True)
                log.info("resumed %s: collecting", row.aggregation_id)
            elif row.state == "computing" and row.announce is not None and row.snapshot_hash is not None:
                a = self._announce_of(row.aggregation_id)
                assert a is not None and row.bitmap is not None
                reg = self._registry_for(a)
                S, _ = decode_bitmap(row.bitmap, a.registry_size)
                inputs = {d: seed for d, _, seed in self.store.participations(row.aggregation_id)}
                seeds = [(reg.entries[int(i)].device_id, inputs[reg.entries[int(i)].device_id]) for i in S]
                noise = [(c, inputs[c]) for c in noise_sign_keys(a)]  # every clerk's, or no snapshot was taken
                rec = Recipient(self.identity, a, row.snapshot_hash, seeds, noise)
                for _, env in self.store.results(row.aggregation_id):
                    try:
                        rec.add_result(env, min(time.time(), a.result_deadline))
                    except SdaError as exc:
                        log.warning("stored result of %s not reloaded: %s", row.aggregation_id, exc)
                self._recipients[row.aggregation_id] = rec
                self._jobs_sent_at[row.aggregation_id] = 0.0  # resend the missing jobs at once
                log.info("resumed %s: computing with %d results", row.aggregation_id, rec.result_count)

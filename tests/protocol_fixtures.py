"""Builders shared by the protocol tests: real identities, a registry, a committee, an announce,
and helpers that drive one aggregation through the sans-I/O objects (no broker, no clock).

Plain functions, imported by the tests as `from protocol_fixtures import ...` (pytest puts this
directory on sys.path because tests/ is not a package).

Inputs are exact multiples of 1/SCALE inside the clip range, so the stochastic rounding of the
fixed-point encoding never rounds up and the expected field sum is known exactly.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sda import crypto
from sda import field as F
from sda.protocol.clerk import Clerk, result_info
from sda.protocol.messages import (
    Announce,
    ClerkJob,
    ClerkResult,
    CommitteeMember,
    Envelope,
    Message,
    Participation,
    seal,
)
from sda.protocol.participant import Participant, ParticipantPolicy
from sda.protocol.recipient import Recipient, Revealed
from sda.protocol.registry import Registry, RegistryEntry
from sda.protocol.server import Server, Snapshot, new_announce

COORDINATOR = "coordinator"
NOW = 1_000.0
PARTICIPATION_DEADLINE = 2_000.0
RESULT_DEADLINE = 3_000.0
SCALE = 2.0**10
CLIP = 4.0
P = F.P_DEFAULT


@functools.cache
def identity(name: str) -> crypto.Identity:
    """A long-term identity per name, generated once per test session."""
    return crypto.Identity.generate()


def fake_registry(size: int, prefix: str = "dev") -> Registry:
    """A registry with random (unused) public keys: cheap, for parameter checks."""
    return Registry([
        RegistryEntry(f"{prefix}-{i}", os.urandom(32), os.urandom(32)) for i in range(size)
    ])


def fake_committee(n: int) -> tuple[CommitteeMember, ...]:
    """A committee with random keys and points 1..n: cheap, for parameter checks."""
    return tuple(
        CommitteeMember(f"clerk-{i}", os.urandom(32), os.urandom(32), i + 1) for i in range(n)
    )


def announce_kwargs(registry: Registry, committee: Sequence[CommitteeMember], **over) -> dict:
    """Keyword arguments of a valid `new_announce` call, with overrides."""
    kw = dict(
        aggregation_id="agg-1",
        coordinator_id=COORDINATOR,
        k=5,
        t=2,
        committee=tuple(committee),
        recipient_key=identity("recipient").public().box_key,
        registry=registry,
        dimension=7,
        scale=SCALE,
        clip_lo=-CLIP,
        clip_hi=CLIP,
        participation_deadline=PARTICIPATION_DEADLINE,
        result_deadline=RESULT_DEADLINE,
        min_participants=5,
    )
    kw.update(over)
    return kw


@dataclass
class World:
    """Everything one aggregation needs, with the secret keys of every party."""

    announce: Announce
    registry: Registry
    coordinator: crypto.Identity
    recipient: crypto.Identity
    clerks: list[crypto.Identity]  # committee order
    devices: list[crypto.Identity]  # registry order

    @property
    def device_ids(self) -> list[str]:
        return [e.device_id for e in self.registry.entries]

    @property
    def clerk_ids(self) -> list[str]:
        return [m.clerk_id for m in self.announce.committee]

    def announce_envelope(self) -> bytes:
        return seal(self.announce, COORDINATOR, self.coordinator)

    def participant(self, i: int, **kw) -> Participant:
        kw.setdefault("policy", ParticipantPolicy(min_participants=self.announce.min_participants))
        return Participant(self.device_ids[i], self.devices[i], **kw)

    def server(self) -> Server:
        return Server(self.announce, self.registry)

    def clerk(self, j: int, **kw) -> Clerk:
        return Clerk(self.clerk_ids[j], self.clerks[j], COORDINATOR,
                     self.coordinator.public().sign_key, **kw)

    def recipient_for(self, snap: Snapshot) -> Recipient:
        return Recipient(self.recipient, self.announce, snap.hash, snap.sealed_seeds)

    def sign_as_coordinator(self, msg: Message) -> bytes:
        return seal(msg, COORDINATOR, self.coordinator)

    def sign_as_clerk(self, j: int, msg: Message) -> bytes:
        return seal(msg, self.clerk_ids[j], self.clerks[j])

    def sign_as_device(self, i: int, msg: Message) -> bytes:
        return seal(msg, self.device_ids[i], self.devices[i])


def make_world(
    devices: int = 30,
    clerks: int = 10,
    k: int = 5,
    t: int = 2,
    dimension: int = 7,
    min_participants: int = 5,
    aggregation_id: str = "agg-1",
    **over,
) -> World:
    """A world with real identities (cached per name) and a checked announce."""
    dev = [identity(f"device-{i}") for i in range(devices)]
    clk = [identity(f"clerk-{j}") for j in range(clerks)]
    registry = Registry([
        RegistryEntry(f"device-{i}", d.public().sign_key, d.public().box_key)
        for i, d in enumerate(dev)
    ])
    committee = tuple(
        CommitteeMember(f"clerk-{j}", c.public().sign_key, c.public().box_key, j + 1)
        for j, c in enumerate(clk)
    )
    a = new_announce(**announce_kwargs(
        registry, committee, aggregation_id=aggregation_id, k=k, t=t, dimension=dimension,
        min_participants=min_participants, **over,
    ))
    return World(a, registry, identity(COORDINATOR), identity("recipient"), clk, dev)


def inputs(world: World, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(count, d) inputs that encode exactly, and their (count, d) int64 fixed-point values."""
    lim = int(CLIP * SCALE)
    ints = np.random.default_rng(seed).integers(-lim, lim + 1, (count, world.announce.dimension))
    return ints / SCALE, ints.astype(np.int64)


def participate(world: World, server: Server, which: Sequence[int], xs: np.ndarray,
                now: float = NOW) -> list[bytes]:
    """Devices `which` participate with rows of xs; every envelope is accepted by the server."""
    out = []
    for i, x in zip(which, xs, strict=True):
        env = world.participant(i).participate(world.announce, x, now).envelope
        assert server.accept(env, now) == world.device_ids[i]
        out.append(env)
    return out


def clerk_results(world: World, jobs: Sequence[tuple[str, bytes]],
                  which: Sequence[int] | None = None, now: float = NOW) -> dict[int, bytes]:
    """Run fresh clerks on their jobs; committee index -> result envelope."""
    which = range(len(jobs)) if which is None else which
    out = {}
    for j in which:
        name, job = jobs[j]
        assert name == world.clerk_ids[j]
        done = world.clerk(j).handle_job(world.announce, job, world.registry, now)
        out[j] = done.envelope
    return out


def open_result(world: World, env: bytes) -> tuple[ClerkResult, np.ndarray]:
    """The recipient's view of one result: the message and the plain share (B,)."""
    res = ClerkResult.decode(Envelope.decode(env).payload)
    plain = crypto.open_from(world.recipient.exchange, res.sealed_share,
                             result_info(res.aggregation_id, res.clerk_id, res.snapshot_hash))
    return res, F.from_uint32_bytes(plain, world.announce.p)


def reseal_result(world: World, j: int, env: bytes,
                  change: Callable[[np.ndarray], np.ndarray]) -> bytes:
    """Clerk j's result with its share replaced by change(share), validly sealed and signed."""
    res, share = open_result(world, env)
    new = np.mod(np.asarray(change(share), np.int64), world.announce.p)
    sealed = crypto.seal_to(world.announce.recipient_key, F.to_uint32_bytes(new),
                            result_info(res.aggregation_id, res.clerk_id, res.snapshot_hash))
    return world.sign_as_clerk(j, ClerkResult(res.aggregation_id, res.clerk_id,
                                              res.snapshot_hash, sealed))


def full_round(world: World, count: int, seed: int = 0
               ) -> tuple[Revealed, np.ndarray, Snapshot, Recipient]:
    """Devices 0..count-1 participate, every clerk answers; returns the reveal and the truth."""
    xs, ints = inputs(world, count, seed)
    server = world.server()
    participate(world, server, range(count), xs)
    snap = server.snapshot()
    rec = world.recipient_for(snap)
    for env in clerk_results(world, server.jobs(COORDINATOR, world.coordinator)).values():
        rec.add_result(env, NOW)
    return rec.reveal(), ints.sum(axis=0), snap, rec


def deterministic_bytes(label: bytes) -> Callable[[int], bytes]:
    """A reproducible stand-in for os.urandom (SHA-256 in counter mode)."""
    counter = 0

    def random_bytes(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            out += hashlib.sha256(label + counter.to_bytes(8, "big")).digest()
            counter += 1
        return out[:n]

    return random_bytes


def job(world: World, clerk_id: str, snapshot_hash: bytes, participants: bytes,
        summed: bytes | None = None) -> bytes:
    """A clerk job signed by the coordinator (summed shares default to B zero words)."""
    if summed is None:
        summed = bytes(4 * world.announce.blocks)
    return world.sign_as_coordinator(ClerkJob(world.announce.aggregation_id, clerk_id,
                                              snapshot_hash, participants, summed))


def participation(world: World, i: int, padded: bytes, sealed_seed: bytes,
                  aggregation_id: str | None = None, device_id: str | None = None) -> bytes:
    """A participation built by hand, signed by device i."""
    msg = Participation(aggregation_id or world.announce.aggregation_id,
                        device_id or world.device_ids[i], padded, sealed_seed)
    return world.sign_as_device(i, msg)

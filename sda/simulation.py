"""A whole aggregation in one process: announce -> participate -> snapshot -> clerk jobs ->
reveal, through the real protocol objects, real keys and real messages (no broker)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import crypto
from .errors import ParameterError
from .field import P_DEFAULT
from .progress import Progress
from .protocol.clerk import Clerk
from .protocol.messages import ClerkResult, CommitteeMember, Envelope, seal
from .protocol.participant import Participant, ParticipantPolicy
from .protocol.recipient import Recipient, Revealed
from .protocol.registry import Registry, RegistryEntry
from .protocol.server import Server, new_announce


def default_thresholds(n: int) -> tuple[int, int]:
    """(k, t) for a committee of n: t = n // 5, tolerate about n / 5 dropouts, n < 2r - t.

    For n = 80 this gives the SDA paper's medium setting (k = 47, t = 16).
    """
    if n < 3:
        raise ParameterError(f"a committee needs at least 3 clerks, got {n}")
    t = max(1, n // 5)
    r = n - max(1, n // 5) - 1
    r = max(r, (n + t) // 2 + 1, t + 1)
    r = min(r, n)
    return r - t, t


@dataclass
class SimulationConfig:
    """What to simulate. Dropped clerks send nothing; wrong clerks send a corrupted share."""

    participants: int = 2000
    clerks: int = 80
    dimension: int = 100
    k: int | None = None
    t: int | None = None
    dropped_clerks: int = 0
    wrong_clerks: int = 0
    clip: float = 1.0
    scale: float = 2.0**16
    seed: int = 0
    p: int = P_DEFAULT
    max_errors: int | None = None  # None: the recipient's safe radius


@dataclass
class SimulationReport:
    """What a simulation did and found."""

    config: SimulationConfig
    k: int
    t: int
    revealed: Revealed
    true_sum: np.ndarray
    true_field_sum: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    upload_bytes_per_participant: int = 0
    clerk_download_bytes: int = 0

    @property
    def exact(self) -> bool:
        """The revealed field sum equals the sum of the encoded inputs, element by element."""
        return bool(np.array_equal(self.revealed.field_sum, self.true_field_sum))


def run(cfg: SimulationConfig, show_progress: bool = True) -> SimulationReport:
    """Run one aggregation in memory and return the revealed sum next to the truth."""
    k, t = (cfg.k, cfg.t) if cfg.k and cfg.t else default_thresholds(cfg.clerks)
    rng = np.random.default_rng(cfg.seed)
    secs: dict[str, float] = {}
    t0 = time.perf_counter()

    coordinator = crypto.Identity.generate()
    recipient_id = crypto.Identity.generate()
    clerk_ids = [crypto.Identity.generate() for _ in range(cfg.clerks)]
    device_ids = []
    with Progress("keys", cfg.participants, enabled=show_progress) as bar:
        for _ in range(cfg.participants):
            device_ids.append(crypto.Identity.generate())
            bar.advance()
    registry = Registry([
        RegistryEntry(f"device-{i}", d.public().sign_key, d.public().box_key)
        for i, d in enumerate(device_ids)
    ])
    committee = tuple(
        CommitteeMember(f"clerk-{i}", c.public().sign_key, c.public().box_key, i + 1)
        for i, c in enumerate(clerk_ids)
    )
    now = time.time()
    announce = new_announce(
        aggregation_id="sim-1", coordinator_id="coordinator", k=k, t=t, committee=committee,
        recipient_key=recipient_id.public().box_key, registry=registry,
        dimension=cfg.dimension, scale=cfg.scale, clip_lo=-cfg.clip, clip_hi=cfg.clip,
        participation_deadline=now + 86400, result_deadline=now + 2 * 86400,
        min_participants=min(cfg.participants, 100), p=cfg.p,
    )
    secs["setup"] = time.perf_counter() - t0

    server = Server(announce, registry, recipient=recipient_id)
    fp_scale, upload = announce.scale, 0
    true_sum = np.zeros(cfg.dimension)
    true_field = np.zeros(cfg.dimension, np.int64)
    t0 = time.perf_counter()
    policy = ParticipantPolicy(min_participants=announce.min_participants)
    with Progress("participants", cfg.participants, enabled=show_progress) as bar:
        for i, ident in enumerate(device_ids):
            x = rng.uniform(-cfg.clip, cfg.clip, cfg.dimension)
            dev = Participant(f"device-{i}", ident, policy)
            out = dev.participate(announce, x, time.time(), rng=np.random.default_rng([cfg.seed, i]))
            # The truth, encoded exactly as the device did (same rounding draws).
            y = np.clip(x, -cfg.clip, cfg.clip) * fp_scale
            low = np.floor(y)
            up = np.random.default_rng([cfg.seed, i]).random(y.shape) < (y - low)
            true_field += low.astype(np.int64) + up
            true_sum += x
            server.accept(out.envelope, time.time())
            upload = len(out.envelope)
            bar.advance()
    secs["participate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    snap = server.snapshot()
    jobs = server.jobs("coordinator", coordinator)
    secs["snapshot"] = time.perf_counter() - t0

    recipient = Recipient(recipient_id, announce, snap.hash, snap.sealed_seeds)
    dropped = set(range(cfg.clerks - cfg.dropped_clerks, cfg.clerks))
    wrong = set(range(cfg.wrong_clerks))
    t0 = time.perf_counter()
    with Progress("clerk jobs", cfg.clerks - len(dropped), enabled=show_progress) as bar:
        for i, (clerk_name, job) in enumerate(jobs):
            if i in dropped:
                continue
            clerk = Clerk(clerk_name, clerk_ids[i], "coordinator", coordinator.public().sign_key)
            done = clerk.handle_job(announce, job, registry, time.time())
            envelope = done.envelope
            if i in wrong:
                envelope = _corrupt(envelope, announce.blocks, announce.p, recipient_id,
                                    clerk_ids[i], clerk_name, rng)
            recipient.add_result(envelope, time.time())
            bar.advance()
    secs["clerks"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    revealed = recipient.reveal(cfg.max_errors)
    secs["reveal"] = time.perf_counter() - t0
    return SimulationReport(
        config=cfg, k=k, t=t, revealed=revealed, true_sum=true_sum, true_field_sum=true_field,
        seconds=secs, upload_bytes_per_participant=upload, clerk_download_bytes=len(jobs[0][1]),
    )


def _corrupt(envelope: bytes, B: int, p: int, recipient: crypto.Identity,
             clerk: crypto.Identity, clerk_name: str, rng: np.random.Generator) -> bytes:
    """A cheating clerk: the same result with a different (validly sealed and signed) share."""
    res = ClerkResult.decode(Envelope.decode(envelope).payload)
    wrong_share = rng.integers(0, p, B).astype("<u4").tobytes()
    from .protocol.clerk import result_info

    info = result_info(res.aggregation_id, res.clerk_id, res.snapshot_hash)
    sealed = crypto.seal_to(recipient.public().box_key, wrong_share, info)
    forged = ClerkResult(res.aggregation_id, res.clerk_id, res.snapshot_hash, sealed)
    return seal(forged, clerk_name, clerk)

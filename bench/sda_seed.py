"""Benchmark of the secure-aggregation core at the SDA paper's analytics settings.

Settings (Dahl, Pastro and Poumeyrol, "Private Data Aggregation on a Budget", 2017), d = 100,
4-byte field elements:
  small   n=24,  t=5,   k=10   (the paper's n=26 violates n < 2r - t, so we run n=24)
  medium  n=80,  t=16,  k=47   at 80,000 participants
  large   n=728, t=145, k=366  at 250,000 participants

Each role is measured on its real work:
  participant  >= 100 real participations, cold (pairwise keys derived) and warm (cached);
  clerk        one real job over all participants: real registry keys, real bitmap, real pads;
               cold = deriving every pairwise key, warm = keys cached;
  server       the snapshot sums of every participant's padded shares (the share bytes are
               random: generating 250,000 real participations would take hours, and summing
               costs the same whatever the bytes are);
  recipient    verifying and opening every clerk result, Berlekamp-Welch/interpolation, opening
               every participant's sealed seed and expanding its mask; the revealed sum is checked;
  end to end   a full protocol run at 2,000 participants with the setting's n, t, k, checked
               against the true sum.
The last line printed is one JSON object keyed by setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from sda import crypto
from sda import field as F
from sda.progress import Progress
from sda.protocol.clerk import Clerk, result_info
from sda.protocol.messages import ClerkJob, ClerkResult, CommitteeMember, seal
from sda.protocol.participant import Participant, ParticipantPolicy, seed_info
from sda.protocol.recipient import Recipient
from sda.protocol.registry import Registry, RegistryEntry
from sda.protocol.server import Server, new_announce
from sda.protocol.snapshot import bitmap_bytes, encode_bitmap, snapshot_hash
from sda.simulation import SimulationConfig, run

SETTINGS = {
    "small": {"n": 24, "t": 5, "k": 10, "participants": 10_000},
    "medium": {"n": 80, "t": 16, "k": 47, "participants": 80_000},
    "large": {"n": 728, "t": 145, "k": 366, "participants": 250_000},
}
D = 100
SCALE = 1.0  # analytics counters: integers
CLIP = 1000.0  # each counter clipped to [-1000, 1000]; 250,000 * 1001 < p/2


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_setting(name: str, n: int, t: int, k: int, participants: int, e2e: int,
                  participant_runs: int, progress: bool) -> dict:
    out: dict = {"participants": participants, "clerks": n, "t": t, "k": k, "dimension": D}
    coordinator, recipient_id = crypto.Identity.generate(), crypto.Identity.generate()
    clerk_ids = [crypto.Identity.generate() for _ in range(n)]
    committee = tuple(
        CommitteeMember(f"clerk-{i}", c.public().sign_key, c.public().box_key, i + 1)
        for i, c in enumerate(clerk_ids)
    )

    # Not every registered device takes part: S is a random 80% of the registry, so the
    # bitmap does not compress to nothing as an all-ones one would.
    registry_size = -(-participants * 5 // 4)
    S = np.sort(np.random.default_rng(0).choice(registry_size, participants, replace=False))
    out["registry_size"] = registry_size
    log(f"[{name}] registry of {registry_size} devices with real keys")
    devices: list[crypto.Identity] = []
    with Progress("registry keys", registry_size, enabled=progress) as bar:
        for _ in range(registry_size):
            devices.append(crypto.Identity.generate())
            bar.advance()
    registry = Registry([
        RegistryEntry(f"device-{i}", d.public().sign_key, d.public().box_key)
        for i, d in enumerate(devices)
    ])
    now = time.time()
    a = new_announce(
        aggregation_id=f"bench-{name}", coordinator_id="coordinator", k=k, t=t,
        committee=committee, recipient_key=recipient_id.public().box_key, registry=registry,
        dimension=D, scale=SCALE, clip_lo=-CLIP, clip_hi=CLIP,
        participation_deadline=now + 86400, result_deadline=now + 2 * 86400,
        min_participants=min(100, participants),
    )
    p, B = a.p, a.blocks

    # --- participant ---------------------------------------------------------------------
    log(f"[{name}] {participant_runs} participations, cold then warm")
    policy = ParticipantPolicy(min_participants=a.min_participants)
    rng = np.random.default_rng(1)
    xs = rng.uniform(-CLIP, CLIP, (participant_runs, D))
    cold, warm, upload = [], [], 0
    for i in range(participant_runs):
        dev = Participant(f"device-{i}", devices[i], policy)
        t0 = time.perf_counter()
        res = dev.participate(a, xs[i], now)
        cold.append(time.perf_counter() - t0)
        upload = len(res.envelope)
        dev.participated.clear()  # same device, keys now cached: the steady state
        t0 = time.perf_counter()
        dev.participate(a, xs[i], now)
        warm.append(time.perf_counter() - t0)
    out["upload_bytes_per_participant"] = upload
    out["participant_ms"] = round(1000 * float(np.mean(cold)), 3)
    out["participant_warm_ms"] = round(1000 * float(np.mean(warm)), 3)
    out["participant_runs"] = participant_runs

    # --- server snapshot -----------------------------------------------------------------
    log(f"[{name}] server snapshot over {participants} participations")
    server = Server(a, registry)
    width = n * B
    seeds = [os.urandom(crypto.SEED_BYTES) for _ in range(participants)]
    with Progress("seal seeds", participants, enabled=progress) as bar:
        sealed = []
        for i, s in zip(S, seeds, strict=True):
            sealed.append(crypto.seal_to(a.recipient_key, s, seed_info(a.aggregation_id, f"device-{i}")))
            bar.advance()
    share_rng = np.random.default_rng(2)
    for i, box in zip(S, sealed, strict=True):
        server.restore(f"device-{i}", F.to_uint32_bytes(share_rng.integers(0, p, width)), box)
    t0 = time.perf_counter()
    snap = server.snapshot()
    out["server_snapshot_s"] = round(time.perf_counter() - t0, 3)
    del server

    # --- clerk ---------------------------------------------------------------------------
    log(f"[{name}] one clerk's job over {participants} participants")
    raw_bitmap = bitmap_bytes(S, registry_size)
    snap_hash = snapshot_hash(a.digest(), raw_bitmap)
    assert snap_hash == snap.hash
    job = seal(ClerkJob(a.aggregation_id, "clerk-0", snap_hash, encode_bitmap(S, registry_size),
                        F.to_uint32_bytes(snap.summed[0])), "coordinator", coordinator)
    out["clerk_download_bytes"] = len(job)
    # Whatever the set, zlib never does much worse than the raw bitmap: the worst case.
    out["clerk_download_bytes_worst_case"] = len(job) - len(encode_bitmap(S, registry_size)) + len(
        raw_bitmap) + 64
    out["clerk_registry_bytes_once"] = 32 * registry_size
    cpk = coordinator.public().sign_key
    clerk = Clerk("clerk-0", clerk_ids[0], "coordinator", cpk)
    t0 = time.perf_counter()
    done = clerk.handle_job(a, job, registry, now)
    out["clerk_cold_s"] = round(time.perf_counter() - t0, 3)
    warm_clerk = Clerk("clerk-0", clerk_ids[0], "coordinator", cpk, pairwise=clerk.pairwise)
    t0 = time.perf_counter()
    done_warm = warm_clerk.handle_job(a, job, registry, now)
    out["clerk_warm_s"] = round(time.perf_counter() - t0, 3)
    out["clerk_result_bytes"] = len(done.envelope)
    assert len(done_warm.envelope) == len(done.envelope)
    del clerk, warm_clerk

    # --- recipient -----------------------------------------------------------------------
    log(f"[{name}] recipient reveal: {n} results, {participants} sealed seeds")
    # Results that share sum(x) + sum(masks) for a known sum(x), so the reveal is checkable.
    true_sum = rng.integers(-participants * 1000, participants * 1000, D)
    mask_total = crypto.mask_sum(seeds, a.aggregation_id, D, p)
    secret = F.add(F.reduce(true_sum, p), mask_total, p)
    from sda.protocol.params import scheme_of

    shares = scheme_of(a).share(secret, crypto.random_field_elements(t * B, p))
    results = []
    for i, m in enumerate(committee):
        box = crypto.seal_to(a.recipient_key, F.to_uint32_bytes(shares[i]),
                             result_info(a.aggregation_id, m.clerk_id, snap_hash))
        results.append(seal(ClerkResult(a.aggregation_id, m.clerk_id, snap_hash, box),
                            m.clerk_id, clerk_ids[i]))
    del seeds
    t0 = time.perf_counter()
    rec = Recipient(recipient_id, a, snap_hash, snap.sealed_seeds)
    for r in results:
        rec.add_result(r, now)
    revealed = rec.reveal()
    out["recipient_reveal_s"] = round(time.perf_counter() - t0, 3)
    out["recipient_reveal_correct"] = bool(np.array_equal(revealed.field_sum, true_sum))
    del rec, snap, sealed, registry, devices

    # --- end to end ----------------------------------------------------------------------
    log(f"[{name}] end to end at {e2e} participants")
    t0 = time.perf_counter()
    rep = run(SimulationConfig(participants=e2e, clerks=n, k=k, t=t, dimension=D, seed=3),
              show_progress=progress)
    out["end_to_end_participants"] = e2e
    out["end_to_end_s"] = round(time.perf_counter() - t0, 3)
    out["end_to_end_correct"] = rep.exact
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    parser.add_argument("--settings", default="small,medium,large", help="comma-separated subset")
    parser.add_argument("--participants", type=int, default=None,
                        help="override every setting's participant count (smoke runs only)")
    parser.add_argument("--e2e-participants", type=int, default=2000)
    parser.add_argument("--participant-runs", type=int, default=100)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = {}
    for name in args.settings.split(","):
        s = dict(SETTINGS[name])
        if args.participants is not None:
            s["participants"] = args.participants
        result[name] = bench_setting(
            name, s["n"], s["t"], s["k"], s["participants"], args.e2e_participants,
            min(args.participant_runs, s["participants"]), progress=sys.stderr.isatty(),
        )
        if not args.json:
            log(json.dumps({name: result[name]}, indent=1))
    result["small"] = result.get("small", {}) | ({"note": "the paper's n=26 violates n < 2r - t;"
                                                  " run with n=24"} if "small" in result else {})
    result = {k: v for k, v in result.items() if v}
    result["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

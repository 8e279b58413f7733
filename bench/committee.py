"""Benchmark of the verifiable committee draw: 728 clerks out of 100,000 registered.

select_s: hash the clerk snapshot and draw the committee (what the coordinator does per announce);
verify_s: everything a participant or clerk does to check an announce's committee against the
snapshot (snapshot hash, membership, keys, cool-down, the draw itself, points). Median of 5 runs,
each on a fresh aggregation id. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from sda import committee as C
from sda.protocol.messages import CommitteeMember


class _Announce:
    def __init__(self, aggregation_id, clerks_hash, committee):
        self.aggregation_id, self.clerks_hash, self.committee = aggregation_id, clerks_hash, tuple(committee)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--registered", type=int, default=100_000)
    p.add_argument("--committee", type=int, default=728)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    stakes = rng.lognormal(6, 2, args.registered).astype(np.int64) + 1
    cands = [C.Candidate(f"clerk{i}", os.urandom(32), os.urandom(32), int(s), bool(rng.random() > 0.02))
             for i, s in enumerate(stakes)]
    select_times, verify_times = [], []
    for run in range(args.runs):
        agg = f"bench-{run}"
        t0 = time.perf_counter()
        h = C.snapshot_hash(cands)
        drawn = C.select(h, agg, cands, args.committee)
        select_times.append(time.perf_counter() - t0)
        a = _Announce(agg, h, [CommitteeMember(c.clerk_id, c.sign_key, c.box_key, i + 1) for i, c in enumerate(drawn)])
        t0 = time.perf_counter()
        C.verify(a, cands)
        verify_times.append(time.perf_counter() - t0)
    out = {
        "registered": args.registered, "committee": args.committee, "runs": args.runs,
        "select_s": round(statistics.median(select_times), 4), "verify_s": round(statistics.median(verify_times), 4),
    }
    if not args.json:
        print(f"select {out['select_s']} s, verify {out['verify_s']} s", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

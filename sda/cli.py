"""`sda`: the secure-aggregation command line.

Subcommands grow with the services; today: `sda simulate`, a whole aggregation in memory.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import __version__
from .errors import SdaError


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _non_negative(v: str) -> int:
    n = int(v)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `sda` (also used to render --help in tests)."""
    parser = argparse.ArgumentParser(
        prog="sda",
        description="Secure distributed aggregation: sum vectors from many devices so that no one,"
        " not the server nor any t clerks, sees a single device's vector.",
    )
    parser.add_argument("--version", action="version", version=f"sda {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sim = sub.add_parser(
        "simulate",
        help="run one whole aggregation in memory and check the revealed sum",
        description="Run announce -> participate -> snapshot -> clerk jobs -> reveal in one process"
        " with real keys and real messages, then print the revealed sum against the true sum.",
    )
    sim.add_argument("--participants", type=_positive, default=2000, help="devices (default 2000)")
    sim.add_argument("--clerks", type=_positive, default=80, help="committee size n (default 80)")
    sim.add_argument("--dimension", type=_positive, default=100, help="vector length d (default 100)")
    sim.add_argument("--packing", "-k", type=_positive, default=None,
                     help="secrets per polynomial k (default: from n, e.g. 47 for n=80)")
    sim.add_argument("--threshold", "-t", type=_positive, default=None,
                     help="privacy threshold t (default n // 5)")
    sim.add_argument("--dropped-clerks", type=_non_negative, default=0,
                     help="clerks that never answer (default 0)")
    sim.add_argument("--wrong-clerks", type=_non_negative, default=0,
                     help="clerks that answer with a wrong share (default 0)")
    sim.add_argument("--max-errors", type=_non_negative, default=None,
                     help="wrong results to correct (default: the safe radius min((m-r)//2, m-r-t))")
    sim.add_argument("--seed", type=int, default=0, help="seed of the simulated inputs")
    sim.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sda` console script."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        if args.command == "simulate":
            return _simulate(args)
    except SdaError as exc:
        print(f"sda: error: {exc}", file=sys.stderr)
        return 1
    return 2


def _simulate(args: argparse.Namespace) -> int:
    from .simulation import SimulationConfig, run

    if (args.packing is None) != (args.threshold is None):
        print("sda: error: give both --packing and --threshold, or neither", file=sys.stderr)
        return 2
    if args.dropped_clerks + args.wrong_clerks > args.clerks:
        print("sda: error: more dropped and wrong clerks than clerks", file=sys.stderr)
        return 2
    cfg = SimulationConfig(
        participants=args.participants, clerks=args.clerks, dimension=args.dimension,
        k=args.packing, t=args.threshold, dropped_clerks=args.dropped_clerks,
        wrong_clerks=args.wrong_clerks, seed=args.seed, max_errors=args.max_errors,
    )
    report = run(cfg, show_progress=not (args.quiet or args.json))
    rev = report.revealed
    err = float(np.abs(rev.values - report.true_sum).max())
    summary = {
        "participants": rev.participants,
        "clerks": args.clerks,
        "clerks_answered": len(rev.clerks_used),
        "k": report.k,
        "t": report.t,
        "dimension": args.dimension,
        "wrong_clerks_named": list(rev.wrong_clerks),
        "exact_field_sum": report.exact,
        "max_abs_error": err,
        "upload_bytes_per_participant": report.upload_bytes_per_participant,
        "clerk_download_bytes": report.clerk_download_bytes,
        "seconds": {k: round(v, 3) for k, v in report.seconds.items()},
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print()
        print(f"aggregation of {rev.participants} participants, d={args.dimension},"
              f" n={args.clerks} clerks (k={report.k}, t={report.t}, r={report.k + report.t});"
              f" {len(rev.clerks_used)} answered")
        if rev.wrong_clerks:
            print(f"wrong results corrected, clerks named: {', '.join(rev.wrong_clerks)}")
        print(f"{'i':>4} {'revealed sum':>16} {'true sum':>16} {'difference':>12}")
        shown = min(args.dimension, 8)
        for i in range(shown):
            print(f"{i:>4} {rev.values[i]:>16.6f} {report.true_sum[i]:>16.6f}"
                  f" {rev.values[i] - report.true_sum[i]:>12.2e}")
        if args.dimension > shown:
            print(f" ... {args.dimension - shown} more")
        print(f"field sum equals the sum of the encoded inputs exactly: {report.exact}")
        print(f"largest difference from the real-valued sum: {err:.3g}"
              f" (fixed-point rounding, at most {rev.participants}/{2**16})")
        print(f"upload per participant: {report.upload_bytes_per_participant} B;"
              f" one clerk's job: {report.clerk_download_bytes} B")
        print("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items()))
    return 0 if report.exact else 1


if __name__ == "__main__":
    sys.exit(main())

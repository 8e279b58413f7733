"""`sda`: the secure-aggregation command line.

Subcommands grow with the services; today: `sda simulate`, a whole aggregation in memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    _add_service_parsers(sub)
    _add_analytics_parsers(sub)
    return parser


def _add_analytics_parsers(sub: argparse._SubParsersAction) -> None:
    an = sub.add_parser("analytics", help="reports of the revealed daily counters (aggregations analytics.DAY)")
    ansub = an.add_subparsers(dest="action", metavar="ACTION")
    rep = ansub.add_parser("report", help="a day's revealed counters with their noise std, and a PNG chart",
                           description="Print the revealed counters of aggregation analytics.DAY (names from the"
                           " aggregation's stored spec) with the std of their DP noise, and write a bar chart"
                           " with error bars.")
    rep.add_argument("--day", required=True, help="the day, YYYY-MM-DD")
    rep.add_argument("--state", type=Path, required=True, help="the coordinator's state directory")
    _add_database_arg(rep)
    rep.add_argument("--chart", type=Path, default=None,
                     help="where to write the PNG (default: analytics-DAY.png in the current directory)")
    rep.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _add_broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                   help="broker URL, mqtt://[user:password@]host:port or mqtts://... (default %(default)s)")
    p.add_argument("--tls-ca", default=None, help="CA certificate file for mqtts:// (default: system CAs)")
    p.add_argument("--protocol", default="auto", choices=["auto", "5", "3.1.1"],
                   help="MQTT version (default: v5 when the broker offers it)")


def _add_database_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database", default=None, metavar="URL",
                   help="coordinator database: postgresql://user@host/db (shared by a leader and ingest"
                   " workers), sqlite:///PATH or a path (default: SQLite at STATE/coordinator.db)")


def _add_service_parsers(sub: argparse._SubParsersAction) -> None:
    co = sub.add_parser("coordinator", help="run or query the coordinator (registry, rounds, reveal)",
                        description="The developer's coordinator: keeps the registry of devices and clerks,"
                        " runs each aggregation (announce, collect, snapshot, clerk jobs, reveal) and stores"
                        " everything in SQLite under --state.")
    cosub = co.add_subparsers(dest="action", metavar="ACTION")
    run = cosub.add_parser("run", help="run the coordinator service until stopped")
    run.add_argument("--state", type=Path, required=True, help="state directory (keys, coordinator.db)")
    _add_broker_args(run)
    run.add_argument("--embedded-broker", action="store_true",
                     help="start an in-process MQTT broker on 127.0.0.1 (port from --broker) first")
    run.add_argument("--ingest-only", action="store_true",
                     help="be an ingest worker: validate and store participations only")
    run.add_argument("--shared-group", default=None,
                     help="receive participations through the MQTT v5 shared subscription $share/GROUP/...")
    run.add_argument("--client-id", default=None, help="MQTT client id (default: the coordinator id)")
    run.add_argument("--grant-stake", type=int, default=0,
                     help="mint and stake this many tokens for each new clerk (demos; default 0)")
    run.add_argument("--device-reward", type=int, default=0,
                     help="tokens paid to each device that contributed to a revealed round (default 0)")
    _add_database_arg(run)
    new = cosub.add_parser("new", help="ask for a new aggregation (announced by the running service)")
    new.add_argument("aggregation_id")
    new.add_argument("--state", type=Path, required=True)
    _add_database_arg(new)
    new.add_argument("--dimension", type=_positive, required=True)
    new.add_argument("--scale", type=float, default=1.0, help="fixed-point units per 1.0 (default 1)")
    new.add_argument("--clip", type=float, nargs=2, default=(-1000.0, 1000.0), metavar=("LO", "HI"))
    new.add_argument("--min-participants", type=_positive, default=10)
    new.add_argument("--collect-seconds", type=float, default=60.0)
    new.add_argument("--result-seconds", type=float, default=60.0)
    new.add_argument("--committee-size", type=_positive, default=None)
    show = cosub.add_parser("show", help="status and result of an aggregation")
    show.add_argument("aggregation_id", nargs="?", default=None, help="omit to list all")
    show.add_argument("--state", type=Path, required=True)
    _add_database_arg(show)
    show.add_argument("--json", action="store_true")
    keys = cosub.add_parser("keys", help="print the coordinator's public keys (hex)")
    keys.add_argument("--state", type=Path, required=True)

    cl = sub.add_parser("clerk", help="run a clerk: take jobs, return shares of sums, earn tokens",
                        description="A clerk registers its keys, receives jobs from the coordinator and answers"
                        " each aggregation exactly once. Its state (processed rounds, pairwise keys) lives"
                        " under --state.")
    cl.add_argument("--credentials", type=Path, required=True,
                    help="credentials file from `sda admin add-clerk` (id, broker login, coordinator keys)")
    cl.add_argument("--state", type=Path, required=True)
    cl.add_argument("--broker", default=None, help="override the broker URL of the credentials")

    le = sub.add_parser("ledger", help="a party's tokens: balance, history, stake, unstake (over MQTT)",
                        description="Ask the coordinator's ledger, over MQTT, for this party's balance or history,"
                        " or stake / unstake tokens. Answers are signed by the coordinator and checked here.")
    le.add_argument("action", choices=["balance", "history", "stake", "unstake"])
    le.add_argument("amount", nargs="?", type=int, default=0, help="tokens to stake or unstake")
    le.add_argument("--credentials", type=Path, required=True, help="the party's credentials file")
    le.add_argument("--key", type=Path, required=True,
                    help="the party's identity file (a clerk's is STATE/clerk.key)")
    le.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the answer")
    le.add_argument("--json", action="store_true")

    cm = sub.add_parser("committee", help="verify that an announce's committee is the log-stake draw")
    cmsub = cm.add_subparsers(dest="action", metavar="ACTION")
    ver = cmsub.add_parser("verify", help="recompute the draw of ANNOUNCE_FILE from the clerk snapshot pages",
                           description="ANNOUNCE_FILE holds the announce envelope as published (retained on"
                           " sda/v1/agg/ID/announce); --pages the clerk snapshot page envelopes (retained on"
                           " sda/v1/clerk_snapshot/N). Exit 0 if the committee is the verifiable draw, 1 if not.")
    ver.add_argument("announce_file", type=Path)
    ver.add_argument("--pages", type=Path, nargs="+", required=True)
    ver.add_argument("--coordinator-key", required=True, help="the coordinator's Ed25519 key, hex")
    ver.add_argument("--coordinator-id", default="coordinator")

    ad = sub.add_parser("admin", help="provision devices and clerks (credentials, Mosquitto users and ACL)")
    adsub = ad.add_subparsers(dest="action", metavar="ACTION")
    for role in ("device", "clerk"):
        a = adsub.add_parser(f"add-{role}", help=f"provision a {role}: broker password and credentials file")
        a.add_argument("name")
        a.add_argument("--state", type=Path, required=True, help="the coordinator's state directory")
        a.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL the party will use")
        a.add_argument("--passwd-file", type=Path, default=None,
                       help="Mosquitto password file to add the user to (e.g. /etc/mosquitto/sda.passwd)")
        a.add_argument("--acl-file", type=Path, default=None, help="Mosquitto ACL file to (re)write")
        a.add_argument("--out", type=Path, default=None, help="credentials file (default NAME.yaml)")
    mint = adsub.add_parser("mint", help="mint tokens to a party in the coordinator's ledger (the developer's act)")
    mint.add_argument("name")
    mint.add_argument("amount", type=_positive)
    mint.add_argument("--state", type=Path, required=True, help="the coordinator's state directory")
    mint.add_argument("--memo", default="minted by the developer")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sda` console script."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "coordinator":
            from .services.cli import coordinator_command

            return coordinator_command(args)
        if args.command == "clerk":
            from .services.cli import clerk_command

            return clerk_command(args)
        if args.command == "ledger":
            from .services.cli import ledger_command

            return ledger_command(args)
        if args.command == "committee":
            from .services.cli import committee_command

            return committee_command(args)
        if args.command == "analytics":
            from .services.cli import analytics_command

            return analytics_command(args)
        if args.command == "admin":
            from .services.cli import admin_command

            return admin_command(args)
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

"""`assistant`: the device's command line.

`assistant demo` is the main job of `make demo`. Until the device services exist it runs a whole
secure aggregation over MQTT on one machine (embedded broker, coordinator, clerks, devices in
separate processes), then the same protocol at the SDA paper's medium setting in memory.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `assistant`."""
    parser = argparse.ArgumentParser(
        prog="assistant",
        description="A private-by-design wake-word assistant that learns from its users by secure"
        " aggregation, without seeing their data.",
    )
    parser.add_argument("--version", action="version", version=f"assistant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the demo on embedded defaults",
        description="Today: (1) one round over MQTT on an embedded broker: a coordinator, 12 clerks"
        " and 60 simulated devices in two processes; (2) one in-memory round of 2,000 devices over"
        " 80 clerks (the SDA paper's medium setting). Each ends with the revealed sum against the truth.",
    )
    demo.add_argument("--devices", type=int, default=60, help="devices in the MQTT round (default 60)")
    demo.add_argument("--broker", default=None, help="use this broker (mqtt://...) instead of an embedded one")
    demo.add_argument("--participants", type=int, default=2000, help="devices in the in-memory round")
    demo.add_argument("--clerks", type=int, default=80, help="clerks in the in-memory round")
    demo.add_argument("--dimension", type=int, default=100)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `assistant` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from sda.cli import main as sda_main
        from sda.services.demo import run_demo

        print("== 1. a secure aggregation over MQTT ==")
        if not run_demo(devices=args.devices, broker_url=args.broker):
            return 1
        print("\n== 2. the SDA paper's medium setting, in memory ==")
        return sda_main([
            "simulate", "--participants", str(args.participants), "--clerks", str(args.clerks),
            "--dimension", str(args.dimension),
        ])
    build_parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())

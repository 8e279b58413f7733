"""`assistant`: the device's command line.

`assistant demo` is the main job of `make demo`. Until the device services exist it runs one
whole secure aggregation in memory (`sda simulate` with its defaults).
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
        description="Today: one whole secure aggregation of 2,000 simulated devices over a"
        " committee of 80 clerks, in memory, ending with the revealed sum against the truth.",
    )
    demo.add_argument("--participants", type=int, default=2000)
    demo.add_argument("--clerks", type=int, default=80)
    demo.add_argument("--dimension", type=int, default=100)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `assistant` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from sda.cli import main as sda_main

        return sda_main([
            "simulate", "--participants", str(args.participants), "--clerks", str(args.clerks),
            "--dimension", str(args.dimension),
        ])
    build_parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())

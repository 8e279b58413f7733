"""`python -m tui [--store DIR] [--control PATH] [--model DIR]`: what `assistant tui` runs. The defaults are
those of `assistant run`, so the UI opens the store the service writes and talks to its socket."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from assistant.errors import AssistantError
from assistant.store import Store

from .app import AssistantApp


def main(argv: list[str] | None = None) -> int:
    """Open the store and run the app until q."""
    p = argparse.ArgumentParser(prog="assistant tui", description="The device's labelling and status UI.")
    p.add_argument("--store", type=Path, default=None, metavar="DIR",
                   help="the device store (default: $XDG_DATA_HOME/assistant, else ~/.local/share/assistant)")
    p.add_argument("--control", type=Path, default=None, metavar="PATH",
                   help="the control socket of `assistant run` (default: DIR/control.sock in the store)")
    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="the model that rescores clips (default: the shipped one)")
    args = p.parse_args(argv)
    # The defaults come from the service's own code, imported only when needed (a start-up cost otherwise).
    if args.store is None:
        from assistant.config import default_store_dir

        args.store = default_store_dir(os.environ)
    if args.control is None:
        from assistant.control import default_control_path

        args.control = default_control_path(args.store)
    if args.model is None:
        from assistant.kws.model import default_model_dir

        args.model = default_model_dir()
    try:
        store = Store(args.store)
    except AssistantError as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1
    with store:
        AssistantApp(store, args.control, args.model).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

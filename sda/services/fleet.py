"""Many simulated devices in one process: for multi-process tests, benchmarks and the demo.

Device i of a fleet sends `fleet_vector(seed, i, d)`, so whoever drives the fleet knows the
true sum without asking the devices. Run as `python -m sda.services.fleet --help`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from .. import crypto
from ..mqtt.transport import BrokerConfig
from ..protocol.messages import Announce
from ..protocol.participant import ParticipantPolicy
from .participant import ParticipantClient, ParticipantConfig


def fleet_vector(seed: int, index: int, dimension: int, low: int = -1000, high: int = 1000) -> np.ndarray:
    """The integer vector device `index` of a fleet sends (values in [low, high))."""
    return np.random.default_rng([seed, index]).integers(low, high, dimension).astype(np.float64)


def fleet_sum(seed: int, indices: range | list[int], dimension: int) -> np.ndarray:
    """The true sum of the fleet's vectors."""
    return np.sum([fleet_vector(seed, i, dimension) for i in indices], axis=0)


#: paho's network loop uses select(), which cannot watch file descriptors above 1023, and each
#: client holds three (its socket and a wake-up socket pair): about 300 clients per process.
MAX_CLIENTS_PER_PROCESS = 300


def start_fleet(prefix: str, indices: range, broker: BrokerConfig, coordinator_id: str,
                coordinator_key: bytes, seed: int, passwords: dict[str, str] | None = None,
                min_participants: int = 10) -> list[ParticipantClient]:
    """Connect and register one ParticipantClient per index; each answers every announce."""
    if len(indices) > MAX_CLIENTS_PER_PROCESS:
        raise ValueError(f"at most {MAX_CLIENTS_PER_PROCESS} devices per process (paho uses select()),"
                         f" got {len(indices)}: run more fleet processes")
    clients = []
    for i in indices:
        name = f"{prefix}{i}"
        cfg = BrokerConfig(**{**broker.__dict__, "username": name if passwords else broker.username,
                              "password": passwords.get(name) if passwords else broker.password})

        def provide(a: Announce, i: int = i) -> np.ndarray:
            return fleet_vector(seed, i, a.dimension)

        c = ParticipantClient(
            ParticipantConfig(name, cfg, coordinator_id, coordinator_key,
                              ParticipantPolicy(min_participants=min_participants)),
            crypto.Identity.generate(), provide)
        c.start()
        clients.append(c)
    return clients


def start_clerks(prefix: str, indices: range, broker: BrokerConfig, coordinator_id: str,
                 coordinator_key: bytes, passwords: dict[str, str] | None, state: str | None) -> list:
    """Run one ClerkService per index, each with its own state directory."""
    import tempfile

    from .clerk import ClerkConfig, ClerkService

    base = Path(state) if state else Path(tempfile.mkdtemp(prefix="sda-clerks-"))
    out = []
    for i in indices:
        name = f"{prefix}{i}"
        cfg = BrokerConfig(**{**broker.__dict__, "username": name if passwords else broker.username,
                              "password": passwords.get(name) if passwords else broker.password})
        svc = ClerkService(ClerkConfig(name, base / name, cfg, coordinator_id, coordinator_key))
        svc.start()
        out.append(svc)
    return out


def stop_fleet(clients: list[ParticipantClient]) -> None:
    """Disconnect every client, in parallel: a client whose broker is gone waits up to a second
    for paho's reconnect loop to notice."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda c: c.stop(), clients))


def main(argv: list[str] | None = None) -> int:
    """Run a fleet until SIGTERM / SIGINT, or for --seconds."""
    p = argparse.ArgumentParser(prog="python -m sda.services.fleet",
                                description="Run simulated devices that take part in every announce.")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL")
    p.add_argument("--prefix", default="dev", help="device ids are PREFIX0, PREFIX1, ...")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=0, help="devices to run")
    p.add_argument("--clerks", type=int, default=0, help="clerks to run as well (ids CLERK-PREFIX0, ...)")
    p.add_argument("--clerk-prefix", default="clerk")
    p.add_argument("--clerk-first", type=int, default=0)
    p.add_argument("--state", default=None, help="directory for the clerks' state (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0, help="seed of the devices' vectors")
    p.add_argument("--coordinator-id", default="coordinator")
    p.add_argument("--coordinator-key", required=True, help="coordinator's Ed25519 key, hex")
    p.add_argument("--passwords", default=None, help="YAML file mapping device id -> broker password")
    p.add_argument("--min-participants", type=int, default=10, help="policy: smallest crowd to join")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--protocol", default="auto", choices=["auto", "5", "3.1.1"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    passwords = yaml.safe_load(Path(args.passwords).read_text()) if args.passwords else None
    broker = BrokerConfig.from_url(args.broker, protocol=args.protocol)
    coordinator_key = bytes.fromhex(args.coordinator_key)
    clerks = start_clerks(args.clerk_prefix, range(args.clerk_first, args.clerk_first + args.clerks), broker,
                          args.coordinator_id, coordinator_key, passwords, args.state)
    clients = start_fleet(args.prefix, range(args.first, args.first + args.count), broker,
                          args.coordinator_id, coordinator_key, args.seed, passwords, args.min_participants)
    print(f"fleet ready: {len(clients)} devices, {len(clerks)} clerks", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    reported = -1
    stop_at = None if args.seconds is None else time.monotonic() + args.seconds
    while not done.wait(0.2):
        sent = sum(len(c.sent) for c in clients)
        if sent != reported:  # progress for whoever drives the fleet
            print(f"sent {sent}", flush=True)
            reported = sent
        if stop_at is not None and time.monotonic() > stop_at:
            break
    stop_fleet(clients)
    for c in clerks:
        c.stop()
    sent = sum(len(c.sent) for c in clients)
    print(f"fleet stopped: {sent} participations sent", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

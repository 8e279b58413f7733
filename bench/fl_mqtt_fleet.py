"""Simulated devices whose inputs come from a file: the device side of bench/fl_mqtt.py, run as a subprocess.

`sda.services.fleet` gives device i a pseudo-random vector from a seed; the federated simulation needs each
device to send *its* quantised update instead. This runs the same sda ParticipantClient per device (as
start_fleet does), but device `PREFIX{i}` provides row i of an int64 array saved with np.save, divided by
the announce's scale. The scale is a power of two, so values[i] / scale is exact in float64 and sda's
stochastic rounding (floor(x * scale) + Bernoulli(0)) gives back exactly values[i]: nothing is rounded.

Protocol with the parent, on stdout: `fleet ready N` once every device is connected and registered,
`sent K` whenever the number of participations sent changes. On SIGTERM it writes a JSON file
(--stats) with every device's bytes published before and after becoming ready, then disconnects.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import yaml

from sda import crypto
from sda.mqtt.transport import BrokerConfig
from sda.protocol.messages import Announce
from sda.protocol.participant import ParticipantPolicy
from sda.services.fleet import MAX_CLIENTS_PER_PROCESS, stop_fleet
from sda.services.participant import ParticipantClient, ParticipantConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--passwords", required=True, help="YAML file mapping broker user -> password")
    p.add_argument("--values", required=True, help=".npy file, int64 (N, d), quantised units")
    p.add_argument("--scale", type=float, required=True, help="quantised units per 1.0 (a power of two)")
    p.add_argument("--first", type=int, required=True, help="first row (device index) this process runs")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--prefix", default="dev")
    p.add_argument("--coordinator-key", required=True, help="coordinator's Ed25519 key, hex")
    p.add_argument("--min-participants", type=int, default=10, help="devices' policy: smallest crowd to join")
    p.add_argument("--stats", required=True, help="JSON file written on exit: per-device bytes published")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.count > MAX_CLIENTS_PER_PROCESS:
        p.error(f"at most {MAX_CLIENTS_PER_PROCESS} devices per process (paho uses select())")
    # mmap: four fleet processes share the page cache instead of each holding a copy of the whole array
    values = np.load(args.values, mmap_mode="r")
    passwords = yaml.safe_load(Path(args.passwords).read_text())
    key = bytes.fromhex(args.coordinator_key)
    scale = args.scale

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    clients: list[ParticipantClient] = []
    for i in range(args.first, args.first + args.count):
        name = f"{args.prefix}{i}"
        broker = BrokerConfig(host=args.host, port=args.port, username=name, password=passwords[name])

        def provide(a: Announce, i: int = i) -> np.ndarray | None:
            row = values[i]
            if a.dimension != row.shape[0] or a.scale != scale:
                return None  # not the round we were started for: stay out rather than send garbage
            return np.asarray(row, np.int64).astype(np.float64) / scale

        c = ParticipantClient(
            ParticipantConfig(name, broker, "coordinator", key,
                              ParticipantPolicy(min_participants=args.min_participants)),
            crypto.Identity.generate(), provide)
        c.start()
        clients.append(c)
        if done.is_set():
            break
    # bytes published so far are the connection and registration; what follows is the participation
    at_ready = {c.config.device_id: c.transport.bytes_out for c in clients}
    print(f"fleet ready {len(clients)}", flush=True)
    reported = -1
    while not done.wait(0.2):
        sent = sum(len(c.sent) for c in clients)
        if sent != reported:
            print(f"sent {sent}", flush=True)
            reported = sent
    stats = {c.config.device_id: {"ready": at_ready.get(c.config.device_id, 0), "end": c.transport.bytes_out,
                                  "sent": list(c.sent)} for c in clients}
    Path(args.stats).write_text(json.dumps(stats))
    stop_fleet(clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A whole secure aggregation over MQTT on one machine: the embedded broker, a coordinator and
clerks in this process, simulated devices in separate processes. What `make demo` runs until the
fuller device demo exists."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..mqtt.broker import EmbeddedBroker
from ..mqtt.transport import BrokerConfig
from ..progress import Progress
from .coordinator import AggregationSpec, Coordinator, CoordinatorConfig
from .fleet import fleet_sum, start_clerks

SEED = 3


def run_demo(devices: int = 60, clerks: int = 12, dimension: int = 10, device_processes: int = 2,
             broker_url: str | None = None, out=sys.stdout) -> bool:
    """Run one round and print the revealed sum next to the truth; True when they are equal."""
    tmp = Path(tempfile.mkdtemp(prefix="sda-demo-"))
    embedded = None
    if broker_url is None:
        embedded = EmbeddedBroker()
        embedded.start()
        broker = BrokerConfig(port=embedded.port, protocol="3.1.1")
        print(f"embedded MQTT broker on {embedded.url}", file=out)
    else:
        broker = BrokerConfig.from_url(broker_url)
    coord = Coordinator(CoordinatorConfig(tmp / "coordinator", broker, grant_stake=100))
    coord.start()
    key = coord.public_keys().sign_key
    clerk_services = start_clerks("clerk", range(clerks), broker, "coordinator", key, None, str(tmp / "clerks"))
    procs = []
    per = -(-devices // device_processes)
    for j in range(device_processes):
        first, count = j * per, min(per, devices - j * per)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "sda.services.fleet", "--broker", f"mqtt://{broker.host}:{broker.port}",
             "--protocol", broker.protocol, "--first", str(first), "--count", str(count), "--seed", str(SEED),
             "--coordinator-key", key.hex()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    print(f"coordinator, {clerks} clerks (this process), {devices} devices ({device_processes} processes)",
          file=out)
    try:
        with Progress("registered", devices + clerks) as bar:
            while (n := len(coord.store.parties())) < devices + clerks:
                bar.advance(n - bar.done)
                time.sleep(0.1)
            bar.advance(n - bar.done)
        t0 = time.monotonic()
        spec = AggregationSpec("demo-1", dimension, scale=1.0, clip_lo=-1000, clip_hi=1000,
                               min_participants=min(devices, 10), collect_s=60, results_s=60)
        coord.store.create_aggregation(spec.aggregation_id, asdict(spec))
        with Progress("participations", devices) as bar:
            while (row := coord.store.aggregation("demo-1")).state in ("pending", "collecting"):
                bar.advance(coord.store.participation_count("demo-1") - bar.done)
                time.sleep(0.05)
            bar.advance(coord.store.participation_count("demo-1") - bar.done)
        while (row := coord.store.aggregation("demo-1")).state not in ("revealed", "failed"):
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        if row.state != "revealed":
            print(f"round failed: {row.error}", file=out)
            return False
        revealed = np.array(row.result["values"])
        truth = fleet_sum(SEED, range(devices), dimension)
        print(f"\nround demo-1 revealed in {seconds:.2f} s: {row.result['participants']} devices,"
              f" {len(row.result['clerks_used'])} clerk results", file=out)
        print(f"{'i':>3} {'revealed sum':>14} {'true sum':>14}", file=out)
        for i in range(dimension):
            print(f"{i:>3} {revealed[i]:>14.0f} {truth[i]:>14.0f}", file=out)
        ok = bool(np.array_equal(revealed, truth))
        print(f"revealed sum equals the true sum: {ok}", file=out)
        print(f"bytes through the coordinator's connection: {coord.transport.bytes_in:,} in,"
              f" {coord.transport.bytes_out:,} out", file=out)
        return ok
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        for c in clerk_services:
            c.stop()
        coord.stop()
        if embedded is not None:
            embedded.stop()

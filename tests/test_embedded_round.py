"""The same end-to-end round on the embedded in-process broker (amqtt, MQTT 3.1.1)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
from brokers import free_port

from sda.mqtt.transport import BrokerConfig
from sda.services.clerk import ClerkConfig, ClerkService
from sda.services.coordinator import AggregationSpec
from sda.services.fleet import fleet_sum
from sda.services.keys import load_or_create_identity
from sda.services.storage import SqliteStore


def test_round_on_the_embedded_broker(tmp_path):
    port = free_port()
    state = tmp_path / "coordinator"
    coord_key = load_or_create_identity(state / "coordinator.key").public().sign_key
    log = tmp_path / "coordinator.log"
    procs = []
    clerks = []
    with open(log, "wb") as fh:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "sda.cli", "coordinator", "run", "--state", str(state),
             "--broker", f"mqtt://127.0.0.1:{port}", "--embedded-broker", "--protocol", "3.1.1",
             "--grant-stake", "100"],
            stdout=fh, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 30
        while "coordinator running" not in log.read_text():
            assert time.monotonic() < deadline and procs[0].poll() is None, log.read_text()
            time.sleep(0.05)
        broker = BrokerConfig(port=port, protocol="3.1.1")
        for i in range(12):
            svc = ClerkService(ClerkConfig(f"clerk{i}", tmp_path / f"clerk{i}", broker, "coordinator", coord_key))
            svc.start()
            clerks.append(svc)
        for first in (0, 25):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "sda.services.fleet", "--broker", f"mqtt://127.0.0.1:{port}",
                 "--protocol", "3.1.1", "--first", str(first), "--count", "25", "--seed", "5",
                 "--coordinator-key", coord_key.hex()],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        store = SqliteStore(state / "coordinator.db")
        deadline = time.monotonic() + 60
        while len(store.parties("device")) < 50 or len(store.parties("clerk")) < 12:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        spec = AggregationSpec("emb-1", 8, scale=1.0, clip_lo=-1000, clip_hi=1000, min_participants=10,
                               collect_s=30, results_s=30)
        store.create_aggregation("emb-1", asdict(spec))
        deadline = time.monotonic() + 60
        while (row := store.aggregation("emb-1")).state not in ("revealed", "failed"):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert row.state == "revealed", row.error
        assert row.result["participants"] == 50
        assert np.array_equal(np.array(row.result["values"]), fleet_sum(5, range(50), 8))
        assert sum(c.stats.processed for c in clerks) == 12
    finally:
        for c in clerks:
            c.stop()
        for p in reversed(procs):  # devices first, the broker (inside the coordinator) last
            p.terminate()
            p.wait(20)

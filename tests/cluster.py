"""A whole deployment for tests: a real Mosquitto, the coordinator, clerks and device fleets as
separate OS processes (plus in-process parties where a test needs to reach inside)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml
from brokers import MosquittoBroker

from sda.mqtt.transport import BrokerConfig
from sda.services.coordinator import AggregationSpec
from sda.services.fleet import fleet_sum
from sda.services.keys import Credentials, load_or_create_identity
from sda.services.storage import CoordinatorStore, open_store


class Cluster:
    """Processes of one deployment, all torn down by `close()`."""

    def __init__(self, tmp: Path, clerks: int, devices: int, seed: int = 7, extra_users: tuple[str, ...] = (),
                 database: str | None = None):
        self.tmp = tmp
        self.seed = seed
        self.clerk_names = [f"clerk{i}" for i in range(clerks)]
        self.device_names = [f"dev{i}" for i in range(devices)]
        users = ("coordinator", *self.clerk_names, *self.device_names, *extra_users)
        self.broker = MosquittoBroker(users=users).start()
        self.state = tmp / "coordinator"
        self.database = database  # `--database` of the coordinator processes (None: SQLite under state)
        self.identity = load_or_create_identity(self.state / "coordinator.key")
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self._store: CoordinatorStore | None = None

    # --- configs -----------------------------------------------------------------------------

    def broker_config(self, user: str) -> BrokerConfig:
        return BrokerConfig(host=self.broker.host, port=self.broker.port, username=user,
                            password=self.broker.passwords[user])

    def url(self, user: str) -> str:
        return f"mqtt://{user}:{self.broker.passwords[user]}@{self.broker.host}:{self.broker.port}"

    @property
    def coordinator_key(self) -> bytes:
        return self.identity.public().sign_key

    @property
    def store(self) -> CoordinatorStore:
        if self._store is None:
            self._store = open_store(self.database, self.state)
        return self._store

    # --- processes ---------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with open(log, "ab") as fh:
            proc = subprocess.Popen([sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.tmp)
        self.procs[name] = proc
        return proc

    def _database_args(self) -> list[str]:
        return ["--database", self.database] if self.database else []

    def start_coordinator(self, shared_group: str | None = None, extra: tuple[str, ...] = ()) -> None:
        self._spawn("coordinator", ["-m", "sda.cli", "coordinator", "run", "--state", str(self.state),
                                    "--broker", self.url("coordinator"), *self._database_args(),
                                    "--grant-stake", "100", *extra,
                                    *(["--shared-group", shared_group] if shared_group else [])])
        self.wait_log("coordinator", "coordinator running")

    def start_ingest_worker(self, client_id: str, shared_group: str) -> None:
        """Another coordinator process, `--ingest-only`, logged in as the broker user `coordinator`
        under its own client id, in the shared subscription group (process and log named client_id)."""
        self._spawn(client_id, ["-m", "sda.cli", "coordinator", "run", "--ingest-only", "--shared-group",
                                shared_group, "--client-id", client_id, "--state", str(self.state),
                                "--broker", self.url("coordinator"), *self._database_args()])
        self.wait_log(client_id, "coordinator running")

    def start_clerk(self, name: str) -> None:
        cred = Credentials(name, "clerk", self.broker_config(name), "coordinator",
                           self.coordinator_key, self.identity.public().box_key)
        path = self.tmp / f"{name}.yaml"
        cred.save(path)
        self._spawn(name, ["-m", "sda.cli", "clerk", "--credentials", str(path), "--state", str(self.tmp / name)])

    def start_fleet(self, name: str, first: int, count: int) -> None:
        pw = self.tmp / f"{name}-passwords.yaml"
        pw.write_text(yaml.safe_dump({d: self.broker.passwords[d] for d in self.device_names}))
        self._spawn(name, ["-m", "sda.services.fleet", "--broker", f"mqtt://{self.broker.host}:{self.broker.port}",
                           "--first", str(first), "--count", str(count), "--seed", str(self.seed),
                           "--coordinator-key", self.coordinator_key.hex(), "--passwords", str(pw)])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._store is not None:
            self._store.close()
        self.broker.cleanup()

    # --- waiting -----------------------------------------------------------------------------

    def wait_log(self, name: str, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs[name].read_text(errors="replace"):
                return
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited:\n{self.log_tail(name)}")
            time.sleep(0.05)
        raise AssertionError(f"{name} never logged {text!r}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, n: int = 60) -> str:
        return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-n:])

    def wait_registered(self, clerks: int, devices: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.store.parties("clerk")) >= clerks and len(self.store.parties("device")) >= devices:
                return
            time.sleep(0.1)
        raise AssertionError(f"registered: {len(self.store.parties('clerk'))} clerks,"
                             f" {len(self.store.parties('device'))} devices\n{self.log_tail('coordinator')}")

    def request(self, aggregation_id: str, dimension: int = 8, **kw) -> AggregationSpec:
        spec = AggregationSpec(aggregation_id, dimension, **{"scale": 1.0, "clip_lo": -1000.0,
                                                             "clip_hi": 1000.0, "min_participants": 10, **kw})
        assert self.store.create_aggregation(aggregation_id, asdict(spec))
        return spec

    def wait_state(self, aggregation_id: str, states: tuple[str, ...], timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            row = self.store.aggregation(aggregation_id)
            if row is not None and row.state in states:
                return row
            time.sleep(0.05)
        raise AssertionError(f"{aggregation_id} stuck in {row and row.state}\n{self.log_tail('coordinator')}")

    def true_sum(self, dimension: int, devices: list[int] | None = None) -> np.ndarray:
        return fleet_sum(self.seed, devices if devices is not None else range(len(self.device_names)), dimension)

    def show(self, aggregation_id: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "sda.cli", "coordinator", "show", aggregation_id,
                              "--state", str(self.state), *self._database_args(), "--json"],
                             capture_output=True, text=True, check=True, env=os.environ)
        return json.loads(out.stdout)


def start_inprocess_clerk(c: Cluster, name: str, tamper=None):
    """A clerk in this process (so a test can make it cheat); returns the ClerkService."""
    from sda.services.clerk import ClerkConfig, ClerkService

    svc = ClerkService(ClerkConfig(name, c.tmp / name, c.broker_config(name), "coordinator", c.coordinator_key),
                       tamper=tamper)
    svc.start()
    return svc


class Spy:
    """A raw MQTT client logged in as the coordinator user (who may read and write every topic):
    records every message, and replays them byte for byte."""

    def __init__(self, c: Cluster, topic_filter: str = "sda/v1/#"):
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spy", protocol=mqtt.MQTTv5)
        self.client.username_pw_set("coordinator", c.broker.passwords["coordinator"])
        self.client.on_message = self._on_message
        self.client.connect(c.broker.host, c.broker.port)
        self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def captured(self, contains: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(t, p) for t, p in self.messages if contains in t]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

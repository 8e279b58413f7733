"""Benchmark of a whole aggregation over MQTT on loopback.

1,000 participants (d = 100) in two device processes, 40 clerks in a third, the coordinator in a
fourth, on (a) Mosquitto with passwords and the sda ACL and (b) the embedded amqtt broker (run in
its own process here, so the coordinator's memory is its own).

Two rounds per broker:
  round_s       a natural round: request -> announce -> 1,000 participations -> snapshot ->
                40 clerk jobs -> reveal, checked against the true sum;
  ingest_per_s  how fast the coordinator validates (Ed25519, shapes, the sealed seed) and stores
                (SQLite WAL, synchronous=FULL) participations when they queue up faster than it
                takes them: the coordinator is paused (SIGSTOP) while the devices publish, then
                resumed; rate = participations / (last stored - first stored).
The last line printed is one JSON object keyed by broker: `mosquitto`, `embedded`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from sda.mqtt import mosquitto as provision
from sda.services.coordinator import AggregationSpec
from sda.services.fleet import fleet_sum
from sda.services.keys import load_or_create_identity
from sda.services.storage import SqliteStore

SEED = 11


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Fleet:
    """A fleet process whose `fleet ready` and `sent N` lines are read in the background: `python -m
    sda.services.fleet ARGS`, or the command `cmd` (bench/fl_mqtt.py's fleets speak the same lines)."""

    def __init__(self, args: list[str], logfile: Path, cmd: list[str] | None = None, **popen):
        self.sent = 0
        self.ready = threading.Event()
        with open(logfile, "wb") as fh:  # Popen keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd or [sys.executable, "-m", "sda.services.fleet", *args],
                                         stdout=subprocess.PIPE, stderr=fh, text=True, **popen)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("fleet ready"):
                self.ready.set()
            elif line.startswith("sent "):
                self.sent = int(line.split()[1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(kind: str, participants: int, clerks: int, dimension: int, device_procs: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"sda-bench-{kind}-"))
    state = tmp / "coordinator"
    coord_key = load_or_create_identity(state / "coordinator.key").public().sign_key.hex()
    port = free_port()
    procs: list[subprocess.Popen] = []
    fleets: list[Fleet] = []
    devices = [f"dev{i}" for i in range(participants)]
    clerk_names = [f"clerk{i}" for i in range(clerks)]
    passwords: dict[str, str] = {}
    # The devices' policy and the announce must agree, and a round asks no more devices than there are: with the
    # old fixed 100 a run of fewer devices was never announced, and waited for ever.
    crowd = str(min(100, participants))
    try:
        if kind == "mosquitto":
            log(f"[{kind}] provisioning {participants + clerks + 1} broker users")
            pw = tmp / "passwd"
            for name in ["coordinator", *clerk_names, *devices]:
                passwords[name] = provision.generate_password()
            # one mosquitto_passwd call per user is slow; write the file through it in one go
            provision.add_user(pw, "coordinator", passwords["coordinator"])
            _bulk_users(pw, {k: v for k, v in passwords.items() if k != "coordinator"})
            provision.write_acl(tmp / "sda.acl")
            run_as_root = ["user root"] if os.geteuid() == 0 else []
            provision.write_config(tmp / "mosquitto.conf", port=port, passwd_file=pw, acl_file=tmp / "sda.acl",
                                   persistence_dir=None, max_packet_bytes=None,
                                   extra_lines=["max_queued_messages 100000", *run_as_root])
            procs.append(subprocess.Popen(["mosquitto", "-c", str(tmp / "mosquitto.conf")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            url = f"mqtt://coordinator:{passwords['coordinator']}@127.0.0.1:{port}"
            protocol = "auto"
            (tmp / "passwords.yaml").write_text(yaml.safe_dump(passwords))
            pw_args = ["--passwords", str(tmp / "passwords.yaml")]
        else:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", "import sys, signal, threading; from sda.mqtt.broker import EmbeddedBroker;"
                 f" b = EmbeddedBroker(port={port}); b.start(); e = threading.Event();"
                 " signal.signal(signal.SIGTERM, lambda *a: e.set()); e.wait(); b.stop()"]))
            url = f"mqtt://127.0.0.1:{port}"
            protocol = "3.1.1"
            pw_args = []
        wait_port(port)
        coord = subprocess.Popen(
            [sys.executable, "-m", "sda.cli", "coordinator", "run", "--state", str(state), "--broker", url,
             "--protocol", protocol, "--grant-stake", "100"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "coordinator.log", "wb"))  # noqa: SIM115
        procs.append(coord)
        base = ["--broker", f"mqtt://127.0.0.1:{port}", "--protocol", protocol, "--seed", str(SEED),
                "--coordinator-key", coord_key, "--min-participants", crowd, *pw_args]
        fleets.append(Fleet([*base, "--clerks", str(clerks), "--state", str(tmp / "clerks")], tmp / "clerks.log"))
        per = -(-participants // device_procs)
        for j in range(device_procs):
            first, count = j * per, min(per, participants - j * per)
            fleets.append(Fleet([*base, "--first", str(first), "--count", str(count)], tmp / f"fleet{j}.log"))
        store = SqliteStore(state / "coordinator.db")
        t0 = time.monotonic()
        while len(store.parties("device")) < participants or len(store.parties("clerk")) < clerks:
            if time.monotonic() - t0 > 300:
                raise RuntimeError(f"registration stalled: {len(store.parties('device'))} devices")
            time.sleep(0.2)
        log(f"[{kind}] {participants} devices and {clerks} clerks registered in {time.monotonic() - t0:.1f} s")
        truth = fleet_sum(SEED, range(participants), dimension)

        def request(agg: str) -> None:
            spec = AggregationSpec(agg, dimension, scale=1.0, clip_lo=-1000, clip_hi=1000, min_participants=int(crowd),
                                   collect_s=300, results_s=300)
            store.create_aggregation(agg, asdict(spec))

        def wait(agg: str, states: tuple[str, ...], timeout_s: float = 900):
            deadline = time.monotonic() + timeout_s
            while (row := store.aggregation(agg)) is None or row.state not in states:
                if time.monotonic() > deadline:
                    tail = (tmp / "coordinator.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{agg} still {row and row.state} after {timeout_s:.0f} s:\n{tail}")
                time.sleep(0.02)
            return row

        # Round 1: natural.
        t0 = time.monotonic()
        request("bench-1")
        row = wait("bench-1", ("revealed", "failed"))
        round_s = time.monotonic() - t0
        ok1 = row.state == "revealed" and np.array_equal(np.array(row.result["values"]), truth)
        log(f"[{kind}] round 1: {row.state} in {round_s:.2f} s, correct={ok1}")
        job_bytes = max(len(e) for _, e in store.jobs("bench-1"))

        # Round 2: the coordinator is paused while every device publishes, then drains the queue.
        base_sent = sum(f.sent for f in fleets[1:])
        request("bench-2")
        wait("bench-2", ("collecting",))
        os.kill(coord.pid, signal.SIGSTOP)
        t_pause = time.monotonic()
        while sum(f.sent for f in fleets[1:]) - base_sent < participants and time.monotonic() - t_pause < 120:
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(coord.pid, signal.SIGCONT)
        row = wait("bench-2", ("revealed", "failed"))
        ok2 = row.state == "revealed" and np.array_equal(np.array(row.result["values"]), truth)
        times = [r[0] for r in store._q("SELECT received_at FROM participations WHERE aggregation_id='bench-2'")]
        ingest = (len(times) - 1) / (max(times) - min(times))
        log(f"[{kind}] round 2: {row.state}, {len(times)} participations drained at {ingest:.0f}/s, correct={ok2}")
        rss = peak_rss_mb(coord.pid)
        store.close()
        return {
            "participants": participants, "clerks": clerks, "dimension": dimension,
            "device_processes": device_procs, "round_s": round(round_s, 3), "ingest_per_s": round(ingest, 1),
            "clerk_download_bytes": job_bytes, "coordinator_peak_rss_mb": round(rss, 1),
            "correct": bool(ok1 and ok2),
        }
    finally:
        for f in fleets:
            f.stop()
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _bulk_users(passwd_file: Path, users: dict[str, str]) -> None:
    """Add many users through mosquitto_passwd's batch mode (-U hashes a plain-text file)."""
    plain = passwd_file.with_suffix(".plain")
    plain.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
    subprocess.run(["mosquitto_passwd", "-U", str(plain)], check=True)
    with open(passwd_file, "a") as out:
        out.write(plain.read_text())
    plain.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="only the JSON object on stdout")
    p.add_argument("--participants", type=int, default=1000)
    p.add_argument("--clerks", type=int, default=40)
    p.add_argument("--dimension", type=int, default=100)
    p.add_argument("--device-processes", type=int, default=None,
                   help="processes for the devices (default: 250 devices each, at least 2)")
    p.add_argument("--brokers", default="mosquitto,embedded")
    args = p.parse_args(argv)
    out = {}
    for kind in args.brokers.split(","):
        procs = args.device_processes or max(2, -(-args.participants // 250))
        out[kind] = run(kind, args.participants, args.clerks, args.dimension, procs)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

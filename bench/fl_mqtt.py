"""One real secure aggregation over a real Mosquitto, of inputs the caller chose: for bench/fl_sim.py.

    r = mqtt_sum(values, scale, clip, min_participants=n, noise=sigma, workdir=tmp)
    assert np.array_equal(r.field_sum, values.sum(axis=0))

`values` (N, d) int64 are the devices' inputs in quantised units (a gradient times `scale`, plus the
device's noise share when there is noise). What runs, all on loopback:

* a Mosquitto 2.x started here on a free port, with a password per party and the sda ACL
  (sda.mqtt.mosquitto provisions it, as on a server; mosquitto_passwd -U hashes the N passwords in one go);
* the coordinator and `clerks` clerk services in this process (as sda.services.demo runs them);
* the N devices as sda ParticipantClients in ceil(N / 250) `python bench/fl_mqtt_fleet.py` subprocesses
  (paho's select() loop allows about 300 clients per process). `values` goes to them through an .npy file
  they memory-map; device i provides values[i] / scale, exact because the scale is a power of two, so sda's
  stochastic rounding gives back values[i] itself.

The announce is the one a learning round makes (assistant.learning.rounds.aggregation_spec): clip range
+-clip (the caller's bound on |values| / scale: sda's participant must never clip an input), and, when
`noise` is given, Skellam noise added by the participants with total standard deviation `noise` in
quantised units and the headroom the sum needs for it. Stats on the way: registration, participations,
reveal, on stderr.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from mqtt_round import Fleet, free_port  # a sibling in bench/

from sda.encoding import FixedPoint, check_capacity
from sda.errors import SdaError
from sda.field import P_DEFAULT
from sda.mqtt import mosquitto as provision
from sda.mqtt.transport import BrokerConfig
from sda.progress import Progress
from sda.services.coordinator import AggregationSpec, Coordinator, CoordinatorConfig
from sda.services.fleet import start_clerks

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DEVICES_PER_PROCESS = 250  # under sda.services.fleet.MAX_CLIENTS_PER_PROCESS, with room for paho's own sockets
AGGREGATION_ID = "fl-mqtt-1"


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields
class MqttRound:
    """What one round over MQTT gave: the revealed sum and what it cost."""

    field_sum: np.ndarray  # (d,) int64, the revealed sum in quantised units (centred decoding)
    seconds: float  # announce requested -> revealed (registration and start-up not counted)
    setup_seconds: float  # broker, coordinator, clerks, device processes up and every party registered
    participants: int
    clerks: int  # clerks registered (the committee)
    clerks_used: int  # clerk results the reveal used
    coordinator_bytes_in: int  # payload bytes the coordinator's connection received (registrations included)
    coordinator_bytes_out: int  # ... and published (announce, snapshots, clerk jobs)
    participation_bytes: int  # stored size of one participation (shares + sealed seed), the largest
    upload_bytes: list[int] = field(default_factory=list)  # per device: payload bytes it published after registering
    clerk_job_bytes: int = 0  # the largest job the coordinator sent one clerk

    def summary(self) -> dict:
        """JSON-ready numbers (no arrays)."""
        up = np.asarray(self.upload_bytes) if self.upload_bytes else np.zeros(0)
        return {"seconds": round(self.seconds, 3), "setup_seconds": round(self.setup_seconds, 3),
                "participants": self.participants, "clerks": self.clerks, "clerks_used": self.clerks_used,
                "coordinator_bytes_in": self.coordinator_bytes_in, "coordinator_bytes_out": self.coordinator_bytes_out,
                "participation_bytes": self.participation_bytes, "clerk_job_bytes": self.clerk_job_bytes,
                "upload_bytes_median": int(np.median(up)) if up.size else None,
                "upload_bytes_max": int(up.max()) if up.size else None}


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"[fl_mqtt] {msg}", file=sys.stderr, flush=True)


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port} within {timeout} s")


def _provision(tmp: Path, port: int, users: list[str]) -> tuple[Path, dict[str, str]]:
    """Password file, ACL and config for a broker on `port`; (config path, user -> password)."""
    passwords = {u: provision.generate_password() for u in users}
    pw = tmp / "passwd"
    # one mosquitto_passwd run per user costs ~10 ms each; -U hashes a whole plain-text file at once
    plain = tmp / "passwd.plain"
    plain.write_text("".join(f"{u}:{p}\n" for u, p in passwords.items()))
    os.chmod(plain, 0o600)
    subprocess.run([provision._passwd_tool(), "-U", str(plain)], check=True, capture_output=True)
    plain.rename(pw)
    provision.write_acl(tmp / "sda.acl")
    # As root, Mosquitto drops to the `mosquitto` user before reading the files; `user root` keeps it
    # able to read files in our private temp dir (as bench/mqtt_round.py does).
    run_as_root = ["user root"] if os.geteuid() == 0 else []
    conf = tmp / "mosquitto.conf"
    provision.write_config(conf, port=port, passwd_file=pw, acl_file=tmp / "sda.acl", persistence_dir=None,
                           max_packet_bytes=None,
                           # the coordinator's inbound queue holds every participation while it ingests them
                           extra_lines=["max_queued_messages 100000", *run_as_root])
    return conf, passwords


class _Fleet(Fleet):
    """One bench/fl_mqtt_fleet.py subprocess (mqtt_round.Fleet reads its lines), and the stats file it writes."""

    def __init__(self, cmd: list[str], log: Path, stats: Path):
        super().__init__([], log, cmd=cmd, stdin=subprocess.DEVNULL, cwd=ROOT)
        self.stats = stats
        self.log = log

    def stop(self) -> dict:
        """SIGTERM, wait; the per-device stats it wrote (empty when it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        try:
            return json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return {}


def _check_inputs(values: np.ndarray, scale: float, clip: float, min_participants: int, noise: float | None,
                  p: int) -> tuple[int, int, int]:
    if values.ndim != 2 or values.dtype != np.int64:
        raise ValueError(f"values must be int64 (N, d), got {values.dtype} {values.shape}")
    n, d = values.shape
    if math.frexp(scale)[0] != 0.5:
        raise ValueError(f"scale {scale!r} is not a power of two: values / scale would not be exact")
    if not 1 <= min_participants <= n:
        raise ValueError(f"min_participants must be in 1..{n}, got {min_participants}")
    if noise is not None and not noise > 0:
        raise ValueError(f"noise (total sigma, quantised units) must be > 0 or None, got {noise!r}")
    worst = int(np.abs(values).max()) if values.size else 0
    if worst > clip * scale:
        # sda's participant clips to [-clip, clip]: a silent clip would break the exact sum
        raise ValueError(f"max |values| = {worst} exceeds clip * scale = {clip * scale:g}")
    # The announce's own capacity rule (sda.protocol.params), with the noise headroom a learning round would
    # announce (assistant.learning.rounds): checked here so a bad call fails at once, not as a failed round.
    from assistant.learning.noise import NoiseMode, noise_headroom

    headroom = 0 if noise is None else noise_headroom(noise, NoiseMode.PARTICIPANTS, n, min_participants)
    try:
        check_capacity(p, n, FixedPoint(scale, -clip, clip).max_abs_value, headroom)
    except SdaError as exc:
        raise ValueError(str(exc)) from None
    return n, d, headroom


def mqtt_sum(values: np.ndarray, scale: float, clip: float, *, min_participants: int, noise: float | None = None,
             workdir: Path | str, progress: bool = True, clerks: int = 10, p: int = P_DEFAULT,
             timeout_s: float = 3600.0) -> MqttRound:
    """Sum `values` (N, d) int64 by one secure aggregation over a real Mosquitto; see the module doc.

    scale: a power of two; clip: bound on |values| / scale (the announce's clip range); noise: total
    standard deviation of the Skellam noise the inputs already carry, in quantised units, added by the
    participants (None: the announce states no noise); workdir: where the round's temporary directory
    goes (removed at the end). Raises ValueError for inputs that cannot be summed exactly, RuntimeError
    when the round fails or times out.
    """
    if clerks < 3:
        raise ValueError(f"the coordinator draws a committee of at least 3 clerks, got clerks={clerks}")
    values = np.asarray(values)
    n, d, headroom = _check_inputs(values, scale, clip, min_participants, noise, p)
    tmp = Path(tempfile.mkdtemp(prefix="fl-mqtt-", dir=workdir))
    broker_proc: subprocess.Popen | None = None
    coord: Coordinator | None = None
    clerk_services: list = []
    fleets: list[_Fleet] = []
    t_setup = time.monotonic()
    try:
        np.save(tmp / "values.npy", values)
        port = free_port()
        device_names = [f"dev{i}" for i in range(n)]
        conf, passwords = _provision(tmp, port, ["coordinator", *(f"clerk{i}" for i in range(clerks)), *device_names])
        (tmp / "passwords.yaml").write_text(yaml.safe_dump(passwords))
        os.chmod(tmp / "passwords.yaml", 0o600)
        with open(tmp / "mosquitto.log", "wb") as fh:
            broker_proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=fh, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
        _wait_port(port, broker_proc, tmp / "mosquitto.log")
        _log(f"mosquitto on 127.0.0.1:{port}, {n} devices x d={d}, {clerks} clerks", progress)

        def broker(user: str) -> BrokerConfig:
            return BrokerConfig(port=port, username=user, password=passwords[user])

        coord = Coordinator(CoordinatorConfig(tmp / "coordinator", broker("coordinator"), grant_stake=100, tick_s=0.1))
        coord.start()
        key = coord.public_keys().sign_key
        clerk_services = start_clerks("clerk", range(clerks), broker("coordinator"), "coordinator", key, passwords,
                                      str(tmp / "clerks"))
        procs = max(1, -(-n // DEVICES_PER_PROCESS))
        per = -(-n // procs)
        for j in range(procs):
            first, count = j * per, min(per, n - j * per)
            cmd = [sys.executable, str(HERE / "fl_mqtt_fleet.py"), "--port", str(port), "--passwords",
                   str(tmp / "passwords.yaml"), "--values", str(tmp / "values.npy"), "--scale", repr(float(scale)),
                   "--first", str(first), "--count", str(count), "--coordinator-key", key.hex(),
                   "--min-participants", str(min_participants), "--stats", str(tmp / f"fleet{j}.json")]
            fleets.append(_Fleet(cmd, tmp / f"fleet{j}.log", tmp / f"fleet{j}.json"))
        deadline = time.monotonic() + timeout_s

        def check_alive() -> None:
            for f in fleets:
                if f.proc.poll() is not None:
                    raise RuntimeError(f"fleet process exited with {f.proc.returncode}:\n"
                                       f"{f.log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"round not finished within {timeout_s:g} s")

        with Progress("registered", n + clerks, enabled=progress) as bar:
            while (k := len(coord.store.parties())) < n + clerks:
                check_alive()
                bar.advance(k - bar.done)
                time.sleep(0.2)
            bar.advance(k - bar.done)
        setup = time.monotonic() - t_setup
        _log(f"set up and registered in {setup:.1f} s ({procs} device processes)", progress)

        noisy = noise is not None
        spec = AggregationSpec(
            AGGREGATION_ID, d, scale=float(scale), clip_lo=-float(clip), clip_hi=float(clip),
            min_participants=min_participants, max_participants=n, collect_s=timeout_s, results_s=timeout_s, p=p,
            noise_mechanism="skellam" if noisy else "none", noise_added_by="participants" if noisy else "none",
            noise_sigma=float(noise) if noisy else 0.0,
            noise_headroom=headroom)
        t0 = time.monotonic()
        if not coord.request(spec):
            raise RuntimeError(f"aggregation {AGGREGATION_ID} exists already")
        with Progress("participations", n, enabled=progress) as bar:
            while (row := coord.store.aggregation(AGGREGATION_ID)).state in ("pending", "collecting"):
                check_alive()
                bar.advance(coord.store.participation_count(AGGREGATION_ID) - bar.done)
                time.sleep(0.1)
            bar.advance(coord.store.participation_count(AGGREGATION_ID) - bar.done)
        _log(f"collection closed after {time.monotonic() - t0:.1f} s; clerks computing", progress)
        while (row := coord.store.aggregation(AGGREGATION_ID)).state not in ("revealed", "failed"):
            check_alive()
            time.sleep(0.1)
        seconds = time.monotonic() - t0
        if row.state != "revealed" or row.result is None:
            raise RuntimeError(f"round {AGGREGATION_ID} failed: {row.error}")
        field_sum = np.asarray(row.result["field_sum"], np.int64)
        _log(f"revealed in {seconds:.1f} s: {row.result['participants']} devices,"
             f" {len(row.result['clerks_used'])} clerk results", progress)
        parts = coord.store.participations(AGGREGATION_ID)
        jobs = coord.store.jobs(AGGREGATION_ID)
        uploads: list[int] = []
        for f in fleets:
            for st in f.stop().values():
                if st["sent"]:
                    uploads.append(st["end"] - st["ready"])
        return MqttRound(
            field_sum=field_sum, seconds=seconds, setup_seconds=setup, participants=int(row.result["participants"]),
            clerks=clerks, clerks_used=len(row.result["clerks_used"]), coordinator_bytes_in=coord.transport.bytes_in,
            coordinator_bytes_out=coord.transport.bytes_out,
            participation_bytes=max((len(s) + len(e) for _, s, e in parts), default=0), upload_bytes=uploads,
            clerk_job_bytes=max((len(e) for _, e in jobs), default=0))
    finally:
        for f in fleets:
            f.stop()
        for c in clerk_services:
            c.stop()
        if coord is not None:
            coord.stop()
        if broker_proc is not None and broker_proc.poll() is None:
            broker_proc.terminate()
            try:
                broker_proc.wait(10)
            except subprocess.TimeoutExpired:
                broker_proc.kill()
                broker_proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Measure one round: `python bench/fl_mqtt.py --devices 1000 --dimension 32833`; JSON on stdout."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--dimension", type=int, default=32833)
    ap.add_argument("--bound", type=int, default=2000, help="values uniform in [-bound, bound]")
    ap.add_argument("--clerks", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    values = np.random.default_rng(args.seed).integers(-args.bound, args.bound + 1, (args.devices, args.dimension),
                                                       dtype=np.int64)
    scale = 2.0**12
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fl-mqtt-bench-") as wd:
        r = mqtt_sum(values, scale, args.bound / scale, min_participants=min(args.devices, 10), workdir=wd,
                     clerks=args.clerks)
    out = {"devices": args.devices, "dimension": args.dimension, "wall_seconds": round(time.monotonic() - t0, 3),
           "exact": bool(np.array_equal(r.field_sum, values.sum(axis=0))), **r.summary()}
    print(json.dumps(out))
    return 0 if out["exact"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

"""Load and soak benchmark: many simulated devices, aggregations back to back, for a bounded time.

On a loopback Mosquitto with passwords and the sda ACL: the coordinator (`sda coordinator run`) in
its own process, the clerks in one fleet process, the devices in fleet processes of at most 250
each (bench/mqtt_round.py's setup). The driver requests an aggregation, waits until it is revealed
or failed, checks the revealed sum against the true sum of the snapshot's participants, and at
once requests the next one, until --minutes are up; the round then in flight is let finish, bounded
by its deadlines (--collect-s, --results-s). The whole run is capped: setup by --setup-timeout, the
rounds by --minutes plus --grace-s; past the cap everything is killed and the JSON says so.

Meanwhile:
  - the RSS (VmRSS) of the coordinator, the clerk process and the device processes is sampled every
    --sample-s; growth = RSS at the end minus RSS after the first (warm-up) round, and the
    least-squares slope of the coordinator's RSS after the warm-up (MB per hour, runs of 60 s or more);
  - an intruder (--junk-per-round, 0 for none), a real broker user with a device's ACL but never
    registered with the coordinator, publishes malformed and forged messages on the topics the
    ACL lets it write: random bytes on its participation topic; another device's participation
    of an earlier round replayed on it (captured off the broker by a loopback sniffer, as a
    network observer would); that participation re-signed as the intruder; a participation in
    a finished aggregation; garbage on its result, registration and ledger topics;
  - `messages_rejected` counts the rejections the coordinator and the clerks logged ("rejected
    REASON on TOPIC", and frames their transports dropped).

The last line on stdout is one JSON object: rounds_completed, failed_rounds, round_p99_s,
coordinator_rss_growth_mb, messages_rejected, junk_sent, ... Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from mqtt_round import Fleet, _bulk_users, free_port, log, wait_port  # noqa: E402  (a sibling in bench/)

from sda import crypto  # noqa: E402
from sda.mqtt import mosquitto as provision  # noqa: E402
from sda.mqtt import topics  # noqa: E402
from sda.mqtt.transport import BrokerConfig, Transport  # noqa: E402
from sda.protocol.messages import Announce, Envelope  # noqa: E402
from sda.protocol.snapshot import decode_bitmap  # noqa: E402
from sda.services.coordinator import AggregationSpec  # noqa: E402
from sda.services.fleet import fleet_vector  # noqa: E402
from sda.services.keys import load_or_create_identity  # noqa: E402
from sda.services.storage import SqliteStore  # noqa: E402

SEED = 11
INTRUDER = "intruder"
VICTIM = "dev0"
FINISHED = ("revealed", "failed")
#: "rejected REASON on TOPIC" (coordinator and clerks) and "dropped a frame on TOPIC" (any transport)
REJECTED_RE = re.compile(r" rejected (.+?) on \S+: | dropped a (frame) on ")


class Aborted(Exception):
    """The hard cap passed (or a signal came): stop everything and report what was measured."""


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Sampler:
    """VmRSS of named processes every `every` seconds, in a background thread."""

    def __init__(self, pids: dict[str, int], every: float):
        self.pids, self.every = pids, every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> dict[str, float]:
        now = {k: v for k, pid in self.pids.items() if (v := rss_mb(pid)) is not None}
        with self._lock:
            self.samples.append((time.monotonic(), now))
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def peak(self, name: str) -> float | None:
        with self._lock:
            vals = [s[name] for _, s in self.samples if name in s]
        return max(vals) if vals else None

    def slope_mb_per_hour(self, name: str, since: float) -> float | None:
        """Least-squares slope of the RSS of `name` over the samples taken from `since` on."""
        with self._lock:
            pts = [(t, s[name]) for t, s in self.samples if t >= since and name in s]
        if len(pts) < 3 or pts[-1][0] - pts[0][0] < 60:  # a shorter window extrapolates noise
            return None
        t, v = np.array(pts).T
        return float(np.polyfit((t - t[0]) / 3600, v, 1)[0])


class Intruder:
    """A broker user with a device's ACL (never registered with the coordinator) that publishes junk,
    and a loopback sniffer (coordinator credentials: a stand-in for a network observer) that
    captures VICTIM's participations for the intruder to replay."""

    KINDS = ("garbage", "replay", "forged", "stale", "result", "registration", "ledger")

    def __init__(self, port: int, password: str, sniffer_password: str, protocol: str):
        self.identity = crypto.Identity.generate()
        self.captured: dict[str, bytes] = {}
        self.sent = 0
        self.by_kind: dict[str, int] = {}
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(SEED)
        base = BrokerConfig(port=port, protocol=protocol)
        self.sniffer = Transport("soak-sniffer", BrokerConfig(**{**base.__dict__, "username": "coordinator",
                                                                 "password": sniffer_password}), self._sniffed)
        self.transport = Transport(INTRUDER, BrokerConfig(**{**base.__dict__, "username": INTRUDER,
                                                             "password": password}), lambda *a: None)
        self.sniffer.start()
        self.sniffer.subscribe(f"{topics.PREFIX}/agg/+/participation/{VICTIM}")
        self.transport.start()

    def _sniffed(self, topic: str, payload: bytes, retained: bool, ack) -> None:
        parsed = topics.parse(topic)
        if parsed is not None and parsed.kind == "participation":
            with self._lock:
                self.captured[parsed.aggregation_id] = payload
                while len(self.captured) > 4:  # keep a few
                    del self.captured[next(iter(self.captured))]

    def attack(self, agg: str, previous: str | None, count: int) -> None:
        """Publish `count` junk messages aimed at aggregation `agg` (kinds in turn)."""
        with self._lock:
            old = [e for a, e in self.captured.items() if a != agg]
        replay = old[-1] if old else None
        for i in range(count):
            kind = self.KINDS[i % len(self.KINDS)]
            garbage = self._rng.bytes(int(self._rng.integers(1, 300)))
            if kind in ("replay", "forged") and replay is None:
                kind = "garbage"  # nothing captured yet (the first round)
            if kind == "garbage":
                topic, payload = topics.participation(agg, INTRUDER), garbage
            elif kind == "replay":  # someone else's signed participation on our topic
                topic, payload = topics.participation(agg, INTRUDER), replay
            elif kind == "forged":  # its payload, validly signed by us: we are not in the registry
                inner = Envelope.decode(replay).payload
                payload = Envelope(INTRUDER, inner, crypto.sign(self.identity.signing, INTRUDER, inner)).encode()
                topic = topics.participation(agg, INTRUDER)
            elif kind == "stale":  # a participation in a finished (or unknown) aggregation
                topic, payload = topics.participation(previous or "soak-none", INTRUDER), replay or garbage
            elif kind == "result":
                topic, payload = topics.result(agg, INTRUDER), garbage
            elif kind == "registration":
                topic, payload = topics.registration(INTRUDER), garbage
            else:
                topic, payload = topics.ledger_request(INTRUDER), garbage
            self.transport.publish(topic, payload)
            self.sent += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def stop(self) -> None:
        for t in (self.transport, self.sniffer):
            with contextlib.suppress(Exception):  # the broker may be gone already
                t.stop()


def count_rejections(logs: list[Path]) -> dict[str, int]:
    out: dict[str, int] = {}
    for path in logs:
        if not path.exists():
            continue
        with open(path, errors="replace") as fh:
            for line in fh:
                m = REJECTED_RE.search(line)
                if m:
                    reason = m.group(1) or m.group(2)
                    out[reason] = out.get(reason, 0) + 1
    return out


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def soak(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="sda-soak-"))
    state = tmp / "coordinator"
    coord_key = load_or_create_identity(state / "coordinator.key").public().sign_key.hex()
    port = free_port()
    procs: list[subprocess.Popen] = []
    fleets: list[Fleet] = []
    devices = [f"dev{i}" for i in range(args.devices)]
    clerk_names = [f"clerk{i}" for i in range(args.clerks)]
    min_participants = args.min_participants or min(100, args.devices)
    intruder: Intruder | None = None
    sampler: Sampler | None = None
    store: SqliteStore | None = None
    out: dict = {"devices": args.devices, "clerks": args.clerks, "dimension": args.dimension,
                 "minutes": args.minutes, "broker": "mosquitto", "min_participants": min_participants}
    durations: list[float] = []
    participants: list[int] = []
    failed: list[str] = []
    rss_after_warmup: dict[str, float] = {}
    t_warm = float("inf")
    aborted = None
    try:
        t_setup = time.monotonic()
        log(f"provisioning {args.devices + args.clerks + 2} broker users in {tmp}")
        passwords = {name: provision.generate_password() for name in ["coordinator", *clerk_names, *devices]}
        intruder_pw = provision.generate_password()
        pw = tmp / "passwd"
        provision.add_user(pw, "coordinator", passwords["coordinator"])
        _bulk_users(pw, {**{k: v for k, v in passwords.items() if k != "coordinator"}, INTRUDER: intruder_pw})
        provision.write_acl(tmp / "sda.acl")
        run_as_root = ["user root"] if os.geteuid() == 0 else []
        provision.write_config(tmp / "mosquitto.conf", port=port, passwd_file=pw, acl_file=tmp / "sda.acl",
                               persistence_dir=None, max_packet_bytes=None,
                               extra_lines=["max_queued_messages 100000", *run_as_root])
        mosq = subprocess.Popen(["mosquitto", "-c", str(tmp / "mosquitto.conf")],
                                stdout=subprocess.DEVNULL, stderr=open(tmp / "mosquitto.log", "wb"))  # noqa: SIM115
        procs.append(mosq)
        wait_port(port)
        (tmp / "passwords.yaml").write_text(yaml.safe_dump(passwords))
        url = f"mqtt://coordinator:{passwords['coordinator']}@127.0.0.1:{port}"
        coord = subprocess.Popen(
            [sys.executable, "-m", "sda.cli", "coordinator", "run", "--state", str(state), "--broker", url,
             "--protocol", args.protocol, "--grant-stake", "100"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "coordinator.log", "wb"))  # noqa: SIM115
        procs.append(coord)
        base = ["--broker", f"mqtt://127.0.0.1:{port}", "--protocol", args.protocol, "--seed", str(SEED),
                "--coordinator-key", coord_key, "--min-participants", str(min_participants),
                "--passwords", str(tmp / "passwords.yaml")]
        fleets.append(Fleet([*base, "--clerks", str(args.clerks), "--state", str(tmp / "clerks")],
                            tmp / "clerks.log"))
        per = args.devices_per_process
        for j in range(-(-args.devices // per)):
            first, count = j * per, min(per, args.devices - j * per)
            fleets.append(Fleet([*base, "--first", str(first), "--count", str(count)], tmp / f"fleet{j}.log"))

        def check_alive() -> None:
            for p in [*procs, *(f.proc for f in fleets)]:
                if p.poll() is not None:
                    raise Aborted(f"process {p.args[:4]} exited with {p.returncode} (logs in {tmp})")

        # Open the database only once the coordinator has (it prints this line after): two processes
        # creating it at once race in sda.sqlite.open_versioned (UNIQUE constraint failed: meta.key).
        while b"coordinator running" not in (tmp / "coordinator.log").read_bytes():
            check_alive()
            if time.monotonic() - t_setup > args.setup_timeout:
                raise Aborted("the coordinator did not start")
            time.sleep(0.1)
        store = SqliteStore(state / "coordinator.db")
        while len(store.parties("device")) < args.devices or len(store.parties("clerk")) < args.clerks:
            check_alive()
            if time.monotonic() - t_setup > args.setup_timeout:
                raise Aborted(f"registration stalled: {len(store.parties('device'))} devices,"
                              f" {len(store.parties('clerk'))} clerks after {args.setup_timeout:.0f} s")
            time.sleep(0.2)
        log(f"{args.devices} devices and {args.clerks} clerks registered in {time.monotonic() - t_setup:.1f} s")
        out["setup_s"] = round(time.monotonic() - t_setup, 1)
        if args.junk_per_round:
            intruder = Intruder(port, intruder_pw, passwords["coordinator"], args.protocol)
        pids = {"coordinator": coord.pid, "clerks": fleets[0].proc.pid, "mosquitto": mosq.pid}
        pids.update({f"fleet{j}": f.proc.pid for j, f in enumerate(fleets[1:])})
        sampler = Sampler(pids, args.sample_s)
        vectors = np.stack([fleet_vector(SEED, i, args.dimension) for i in range(args.devices)])
        index_of = {p.party_id: int(p.party_id[3:]) for p in store.parties("device")}

        t_start = time.monotonic()
        stop_requesting = t_start + args.minutes * 60
        hard_cap = stop_requesting + args.grace_s
        previous: str | None = None
        n = 0
        while time.monotonic() < stop_requesting:
            n += 1
            agg = f"soak-{n}"
            spec = AggregationSpec(agg, args.dimension, scale=1.0, clip_lo=-1000, clip_hi=1000,
                                   min_participants=min_participants, collect_s=args.collect_s,
                                   results_s=args.results_s)
            t0 = time.monotonic()
            store.create_aggregation(agg, asdict(spec))
            attacked = intruder is None
            while (row := store.aggregation(agg)) is None or row.state not in FINISHED:
                if not attacked and row is not None and row.state != "pending":
                    intruder.attack(agg, previous, args.junk_per_round)
                    attacked = True
                if time.monotonic() > hard_cap:
                    failed.append(agg)
                    raise Aborted(f"hard cap: {agg} still {row.state if row else 'unknown'}")
                check_alive()
                time.sleep(args.poll_s)
            seconds = time.monotonic() - t0
            ok, count, why = row.state == "revealed", 0, row.error or ""
            if ok:
                a = Announce.decode(Envelope.decode(row.announce).payload)
                S, _ = decode_bitmap(row.bitmap, a.registry_size)
                reg = store.parties("device")[: a.registry_size]
                members = [index_of[reg[int(i)].party_id] for i in S]
                truth = vectors[members].sum(axis=0)
                count = len(members)
                if count != row.result["participants"] or not np.array_equal(np.array(row.result["values"]), truth):
                    ok, why = False, "wrong sum"
            if ok:
                durations.append(seconds)
                participants.append(count)
            else:
                failed.append(agg)
            if n == 1:
                rss_after_warmup = sampler.sample()
                t_warm = time.monotonic()
            log(f"round {agg}: {seconds:.2f} s, {count} participants, {row.state}"
                f"{'' if ok else ' FAILED: ' + why}")
            previous = agg
    except (Aborted, KeyboardInterrupt) as exc:
        aborted = str(exc) or type(exc).__name__
        log(f"aborted: {aborted}")
    except Exception as exc:  # a bug or a broken setup: still clean up and report
        aborted = f"{type(exc).__name__}: {exc}"
        log(f"aborted: {aborted}\n{traceback.format_exc()}")
    finally:
        final = sampler.sample() if sampler is not None else {}
        if sampler is not None:
            sampler.stop()
        if intruder is not None:
            intruder.stop()
        if store is not None:
            db = state / "coordinator.db"
            out["coordinator_db_mb"] = round(sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20, 1)
            store.close()
        stop_all([*(f.proc for f in fleets), *procs[1:]])  # the broker last: no reconnect noise
        stop_all(procs[:1])
        rejected = count_rejections([tmp / "coordinator.log", tmp / "clerks.log"])
        if aborted:  # the logs are about to go: show how the services ended
            for name in ("mosquitto.log", "coordinator.log", "clerks.log"):
                lines = (tmp / name).read_text(errors="replace").splitlines() if (tmp / name).exists() else []
                for line in lines[-8:]:
                    log(f"  {name}: {line}")
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    def mb(x: float | None) -> float | None:
        return None if x is None else round(x, 1)

    out.update({
        "rounds_completed": len(durations),
        "failed_rounds": len(failed),
        "failed_round_ids": failed[:20],
        "round_mean_s": round(float(np.mean(durations)), 3) if durations else None,
        "round_p50_s": percentile(durations, 50),
        "round_p99_s": percentile(durations, 99),
        "round_max_s": round(max(durations), 3) if durations else None,
        "participants_min": min(participants) if participants else None,
        "messages_rejected": sum(rejected.values()),
        "rejected_by_reason": rejected,
        "junk_sent": intruder.sent if intruder else 0,
        "junk_by_kind": intruder.by_kind if intruder else {},
    })
    start = rss_after_warmup
    out["coordinator_rss_mb_start"] = mb(start.get("coordinator"))
    out["coordinator_rss_mb_end"] = mb(final.get("coordinator"))
    out["coordinator_rss_mb_peak"] = mb(sampler.peak("coordinator") if sampler else None)
    for name in ("coordinator", "clerks", "mosquitto"):
        key = f"{name}_rss_growth_mb"
        out[key] = mb(final[name] - start[name]) if name in start and name in final else None
    if sampler is not None:
        slope = sampler.slope_mb_per_hour("coordinator", t_warm)
        out["coordinator_rss_slope_mb_per_hour"] = None if slope is None else round(slope, 1)
        if args.samples_out:
            Path(args.samples_out).write_text(json.dumps([{"t": round(t, 2), **v} for t, v in sampler.samples]))
    fleets_names = [k for k in start if k.startswith("fleet")]
    if fleets_names and all(k in final for k in fleets_names):
        out["fleets_rss_growth_mb"] = mb(sum(final[k] - start[k] for k in fleets_names))
    out["aborted"] = aborted
    return out


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process at once, wait (bounded), SIGKILL whatever is left."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)  # in case it was stopped
                p.terminate()
            except OSError:
                pass
    deadline = time.monotonic() + 30
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON line on stdout (the last line); default: indented JSON")
    p.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    p.add_argument("--clerks", type=int, default=40, help="clerks, every one in each committee (default 40)")
    p.add_argument("--dimension", type=int, default=100, help="length of each device's vector (default 100)")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="request new rounds for this long (default 10); the round in flight then finishes")
    p.add_argument("--grace-s", type=float, default=120.0,
                   help="hard cap past --minutes for the last round; then everything is killed (default 120)")
    p.add_argument("--setup-timeout", type=float, default=300.0,
                   help="seconds allowed to start the processes and register every party (default 300)")
    p.add_argument("--collect-s", type=float, default=60.0,
                   help="each round's participation deadline, after its announce (default 60; a round closes"
                        " as soon as every registered device took part)")
    p.add_argument("--results-s", type=float, default=60.0,
                   help="each round's deadline for the clerks' results, after collection (default 60)")
    p.add_argument("--min-participants", type=int, default=None,
                   help="announce minimum and device policy (default min(100, devices))")
    p.add_argument("--junk-per-round", type=int, default=20,
                   help="junk messages the intruder publishes in each round (default 20; 0: no intruder)")
    p.add_argument("--devices-per-process", type=int, default=250,
                   help="devices per fleet process (at most 300: paho's select() limit)")
    p.add_argument("--sample-s", type=float, default=1.0, help="RSS sampling period (default 1 s)")
    p.add_argument("--poll-s", type=float, default=0.05, help="how often the driver polls a round's state")
    p.add_argument("--protocol", default="auto", choices=["auto", "5", "3.1.1"], help="MQTT version")
    p.add_argument("--samples-out", default=None, help="write every RSS sample (MB) to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    args = p.parse_args(argv)
    if not 1 <= args.devices_per_process <= 300:
        p.error("--devices-per-process must be 1..300")

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    out = soak(args)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2), flush=True)
    return 0 if out["failed_rounds"] == 0 and out["rounds_completed"] and not out["aborted"] else 1


if __name__ == "__main__":
    sys.exit(main())

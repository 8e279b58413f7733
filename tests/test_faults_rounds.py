"""Fault injection at every phase of a round, over a real Mosquitto with real processes.

Faults: a broker restart, a SIGKILL of the coordinator (then a restart), a SIGKILL of one committee clerk
(then a restart with the same state). Phases, each detected from the coordinator's store, never by a blind
sleep; the device fleets and clerks are held with SIGSTOP (slow devices, slow clerks) so that a phase lasts
until the fault is in:

- `announced`: the announce is stored (state collecting) and no participation is, every fleet held;
- `collecting`: k of the N participations stored, k random (a random subset of the fleets held);
- `jobs-sent`: the snapshot is taken and the jobs are stored and published, no result yet (clerks held);
- `results`: j of the n results stored, j random in 1..n-1 (the other clerks still held);
- `mid-snapshot`, `mid-snapshot-few` (coordinator only, see PHASES_OF): collection closed on k stored,
  no snapshot yet; k >= min_participants, or fewer.

The held processes are released while the broker, coordinator or clerk is down (after a random pause), so
devices and clerks keep publishing into the outage, as they would.

Oracles, for every round: it ends `revealed` with exactly the true sum over the devices of the stored
snapshot bitmap (only `mid-snapshot-few` must end `failed`, with the min_participants error, and then the
next round on the same processes reveals). No participation stored before the fault is lost (the stored
set only grows), and every one of them is in the revealed sum; every stored result is used. Every job
sent for a round is the stored job (a restarted coordinator sends no other set), every result a clerk sent
for a round is the same bytes (a restarted clerk never answers differently, even when its job is delivered
again), no clerk is paid or slashed twice, locks are released. After a broker restart every process is the
one that ran before (they reconnected on their own). No service logs an exception. A last round with no
fault reveals the true sum over all devices.

A last test injects each kind of fault once more at a random instant after the request, holding nothing:
it lands wherever the round is by then (pending, collecting, closing, computing, even revealed).

The moments inside the phases come from random.Random(f"{SEED}/{kind}"); the seed is in every assertion
message; `SDA_FAULT_SEED=... pytest tests/test_faults_rounds.py` replays another draw.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import threading
import time
from collections import defaultdict

import numpy as np
import pytest
from cluster import Cluster

from sda.ledger import Ledger
from sda.mqtt import topics
from sda.mqtt.framing import frame, unframe
from sda.protocol.messages import Announce, Envelope
from sda.protocol.snapshot import decode_bitmap

SEED = int(os.environ.get("SDA_FAULT_SEED", "20261126"))
CLERKS = 6  # committee of 6: k = 3, t = 1, r = 4, and n < 2r - t (5 while a late clerk cools down: r = 4)
DEVICES = 20
FLEETS = 3
DIM = 8
MIN_PARTICIPANTS = 10  # the fleets' own policy minimum as well
PHASES = ("announced", "collecting", "jobs-sent", "results")
# The coordinator also dies in the middle of taking the snapshot: between its two writes (collecting ->
# closing, then snapshot + jobs), a window of microseconds no timing can aim at. The test makes the first
# write itself, with the store's own call, while the coordinator is dead: the database is then exactly what
# such a crash leaves, and the restarted coordinator must finish the snapshot over what was stored.
# With k >= MIN_PARTICIPANTS stored the round reveals exactly those k; with fewer (`mid-snapshot-few`) it is
# abandoned, cleanly, and the next round reveals.
PHASES_OF = {"broker": PHASES, "coordinator": (*PHASES[:2], "mid-snapshot", "mid-snapshot-few", *PHASES[2:]),
             "clerk": PHASES}
TERMINAL = ("revealed", "failed")
# Generous caps (a loaded machine): a healthy round closes as soon as every device is in and reveals once
# every clerk answered, so they cost nothing unless something is lost.
COLLECT_S = 30.0
RESULTS_S = 30.0


class Recorder:
    """A raw MQTT client logged in as the coordinator user (who may read every topic): keeps every job and
    result frame it sees, per (kind, aggregation, party). Subscribes again after each (re)connect, so it
    follows a broker restart (what is published while it is away it does not see)."""

    def __init__(self, c: Cluster):
        import paho.mqtt.client as mqtt

        self.frames: dict[tuple[str, str, str], list[bytes]] = defaultdict(list)
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fault-recorder",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set("coordinator", c.broker.passwords["coordinator"])
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = lambda client, *_: client.subscribe(f"{topics.PREFIX}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(c.broker.host, c.broker.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        parsed = topics.parse(msg.topic)
        if parsed is not None and parsed.kind in ("job", "result") and msg.payload:
            with self._lock:
                self.frames[(parsed.kind, parsed.aggregation_id, parsed.party_id)].append(bytes(msg.payload))

    def seen(self, kind: str, agg: str, party: str) -> list[bytes]:
        with self._lock:
            return list(self.frames[(kind, agg, party)])

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _wait(what: str, ok, timeout: float = 30.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ok()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class FaultRun:
    """One deployment (coordinator, CLERKS clerk processes, FLEETS fleet processes) and the rounds played on
    it, one fault of `kind` per round. The fleet sizes come from SEED, the moments of a kind's faults from
    SEED and the kind."""

    def __init__(self, c: Cluster):
        self.c = c
        self.kind = ""
        self.rng = random.Random(SEED)
        self.paused: set[str] = set()
        self.outcomes: list[tuple[str, str, str]] = []  # (round, phase, what happened)
        self.rounds = 0
        # Devices 0..DEVICES-1 split at random cut points into FLEETS processes (sizes vary with the seed).
        cuts = sorted(self.rng.sample(range(1, DEVICES), FLEETS - 1))
        bounds = [0, *cuts, DEVICES]
        self.fleets = {f"fleet{i}": (bounds[i], bounds[i + 1] - bounds[i]) for i in range(FLEETS)}
        self.recorder: Recorder | None = None

    def tag(self, agg: str, phase: str) -> str:
        return f"[seed {SEED}, fault {self.kind}, phase {phase}, {agg}]"

    # --- processes ---------------------------------------------------------------------------

    def start(self) -> None:
        c = self.c
        c.start_coordinator()
        for name in c.clerk_names:
            c.start_clerk(name)
        for name, (first, count) in self.fleets.items():
            c.start_fleet(name, first, count)
        c.wait_registered(clerks=CLERKS, devices=DEVICES)
        self.recorder = Recorder(c)

    def pause(self, names) -> None:
        for name in names:
            self.c.procs[name].send_signal(signal.SIGSTOP)
            self.paused.add(name)

    def resume(self, names=None) -> None:
        for name in sorted(self.paused if names is None else names):
            if name in self.paused:
                self.paused.discard(name)
                if name in self.c.procs:
                    self.c.procs[name].send_signal(signal.SIGCONT)

    def log_count(self, name: str, text: str) -> int:
        return self.c.logs[name].read_text(errors="replace").count(text)

    def restart(self, name: str, while_down=None) -> None:
        """SIGKILL `name` (coordinator or a clerk), call `while_down()`, start it again on the same state and
        wait until it runs."""
        c = self.c
        text = "coordinator running" if name == "coordinator" else f"clerk {name} running"
        before = self.log_count(name, text)
        self.paused.discard(name)  # SIGKILL ends a stopped process as well
        c.kill(name)
        if while_down is not None:
            while_down()
        if name == "coordinator":
            c.start_coordinator()  # (its own wait sees the first start's line; wait for a new one below)
        else:
            c.start_clerk(name)
        _wait(f"{name} to run again\n{c.log_tail(name)}", lambda: self.log_count(name, text) > before)

    # --- store views -------------------------------------------------------------------------

    def announce(self, agg: str) -> Announce:
        row = self.c.store.aggregation(agg)
        assert row is not None and row.announce is not None
        return Announce.decode(Envelope.decode(row.announce).payload)

    def stored_devices(self, agg: str) -> set[str]:
        return {d for d, _, _ in self.c.store.participations(agg)}

    def answered(self, agg: str) -> set[str]:
        return {clerk for clerk, _ in self.c.store.results(agg)}

    def clerk_processed(self, clerk: str, agg: str) -> bytes | None:
        """The result the clerk recorded (before sending it) in its own database, or None."""
        path = self.c.tmp / clerk / "clerk.db"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            row = db.execute("SELECT result FROM processed WHERE aggregation_id=?", (agg,)).fetchone()
        finally:
            db.close()
        return None if row is None else bytes(row[0])

    # --- rounds ------------------------------------------------------------------------------

    def next_id(self, phase: str) -> str:
        self.rounds += 1
        return f"round-{self.rounds}-{self.kind}-{phase}"

    def request(self, agg: str) -> None:
        self.c.request(agg, dimension=DIM, collect_s=COLLECT_S, results_s=RESULTS_S, close_when_complete=True,
                       reward_per_participant=1, min_participants=MIN_PARTICIPANTS)

    def held_fleets(self, want) -> list[str]:
        """A random proper, non-empty set of fleets to hold, such that want(devices not held)."""
        names = sorted(self.fleets)
        sets = [list(h) for n in range(1, FLEETS) for h in itertools.combinations(names, n)
                if want(DEVICES - sum(self.fleets[f][1] for f in h))]
        return self.rng.choice(sets)

    def clean_round(self) -> None:
        """A round with no fault: every device in, the true sum."""
        agg = self.next_id("clean")
        t0 = time.monotonic()
        self.request(agg)
        row = self.c.wait_state(agg, TERMINAL, timeout=90)
        tag = self.tag(agg, "none")
        assert row.state == "revealed", f"{tag} the round after the faults: {row.error}"
        assert row.result["participants"] == DEVICES, tag
        assert np.array_equal(np.array(row.result["values"]), self.c.true_sum(DIM)), tag
        self.check_messages(agg, tag)
        self.check_ledger(agg, row, tag)
        self.outcomes.append((agg, "none", f"revealed, {DEVICES} participants [{time.monotonic() - t0:.1f} s]"))

    def fault_round(self, phase: str) -> None:
        """A round with one fault of `self.kind` at `phase` (see the module's docstring)."""
        c, rng = self.c, self.rng
        agg = self.next_id(phase)
        tag = self.tag(agg, phase)
        t0 = time.monotonic()
        held_fleets: list[str] = []
        if phase == "announced":
            held_fleets = sorted(self.fleets)
        elif phase == "collecting":
            held_fleets = self.held_fleets(lambda k: True)
        elif phase == "mid-snapshot":
            held_fleets = self.held_fleets(lambda k: k >= MIN_PARTICIPANTS)
        elif phase == "mid-snapshot-few":
            held_fleets = self.held_fleets(lambda k: k < MIN_PARTICIPANTS)
        self.pause(held_fleets)
        if phase in ("jobs-sent", "results"):
            self.pause(c.clerk_names)
        self.request(agg)

        row = c.wait_state(agg, ("collecting", "closing", "computing", *TERMINAL), timeout=60)
        committee = [m.clerk_id for m in self.announce(agg).committee]
        early: list[str] = []
        if phase == "announced":
            time.sleep(rng.uniform(0.0, 0.3))
            assert c.store.participation_count(agg) == 0, f"{tag} every fleet is held"
        elif phase in ("collecting", "mid-snapshot", "mid-snapshot-few"):
            k = sum(n for name, (_, n) in self.fleets.items() if name not in held_fleets)
            _wait(f"{tag} {k} participations", lambda: c.store.participation_count(agg) >= k)
            assert c.store.aggregation(agg).state == "collecting", f"{tag} {held_fleets} are held"
        else:
            row = c.wait_state(agg, ("computing", *TERMINAL), timeout=60)
            assert row.state == "computing", f"{tag} {row.state}: {row.error}"
            if phase == "jobs-sent":
                time.sleep(rng.uniform(0.0, 0.3))
                assert not self.answered(agg), f"{tag} every clerk is held"
            else:
                early = rng.sample(committee, rng.randint(1, len(committee) - 1))
                self.resume(early)
                _wait(f"{tag} results of {early}", lambda: self.answered(agg) >= set(early))
        # The clerk to kill: one that already answered when results are arriving; any committee member before.
        self.inject_and_check(agg, tag, phase, sorted(early) if phase == "results" else committee, t0)

    def random_instant_round(self) -> None:
        """A round with one fault of `self.kind` at a random instant: nothing is held, the fault lands in
        whatever phase the round is in by then (pending ... revealed)."""
        c = self.c
        agg = self.next_id("random")
        t0 = time.monotonic()
        self.request(agg)
        time.sleep(self.rng.uniform(0.0, 0.8))  # an undisturbed round takes about 0.5-1 s
        row = c.store.aggregation(agg)
        phase = row.state
        if phase == "collecting":
            phase += f" ({c.store.participation_count(agg)} stored)"
        elif phase == "computing":
            phase += f" ({len(self.answered(agg))} results)"
        committee = [m.clerk_id for m in self.announce(agg).committee] if row.announce else c.clerk_names
        self.inject_and_check(agg, self.tag(agg, phase), phase, committee, t0)

    def inject_and_check(self, agg: str, tag: str, phase: str, victims: list[str], t0: float) -> None:
        """Inject the fault (releasing whatever is held while the broker / coordinator / clerk is down), wait
        for the round to end and check every oracle."""
        c, rng = self.c, self.rng
        stored_before = self.stored_devices(agg)
        state_before = c.store.aggregation(agg).state
        answered_before = self.answered(agg)
        victim = None
        pids = {name: p.pid for name, p in c.procs.items()}
        reconnects = {name: self.log_count(name, "reconnected") for name in ("coordinator", *c.clerk_names)}

        def while_down() -> None:
            # The held devices or clerks carry on while the broker / coordinator / clerk is down.
            self.resume()
            time.sleep(rng.uniform(0.0, 0.5))

        if self.kind == "broker":
            c.broker.stop()  # SIGTERM: Mosquitto saves its persistence file; then the same port again
            while_down()
            c.broker.start()
        elif self.kind == "coordinator":
            def unchanged() -> None:
                assert c.store.aggregation(agg).state == state_before, tag
                if phase.startswith("mid-snapshot"):
                    assert c.store.close_collection(agg), tag  # the coordinator's first write, then the crash
                while_down()

            self.restart("coordinator", unchanged)
            if state_before in ("collecting", "computing") and not phase.startswith("mid-snapshot"):
                _wait(f"{tag} the restarted coordinator to resume the round\n{c.log_tail('coordinator')}",
                      lambda: self.log_count("coordinator", f"resumed {agg}: {state_before}") == 1)
        else:
            victim = rng.choice(victims)
            recorded = self.clerk_processed(victim, agg)
            self.restart(victim, while_down)
            if recorded is not None:
                assert self.clerk_processed(victim, agg) == recorded, f"{tag} {victim}'s record changed"
        after = self.stored_devices(agg)
        assert after >= stored_before, f"{tag} participations lost in the fault: {sorted(stored_before - after)}"

        if victim is not None and victim in answered_before:
            # The restarted clerk is offered its job again (a QoS 1 redelivery): it must send the same bytes.
            (job,) = [env for clerk, env in c.store.jobs(agg) if clerk == victim]
            for f in frame(job, None):
                self.recorder.publish(topics.job(victim, agg), f)
            _wait(f"{tag} {victim} to answer its job again",
                  lambda: len(self.recorder.seen("result", agg, victim)) >= 2, timeout=30)

        # -- the outcome ----------------------------------------------------------------------
        final = c.wait_state(agg, TERMINAL, timeout=90)
        count = c.store.participation_count(agg)
        assert count >= len(stored_before), f"{tag} stored participations went from {len(stored_before)} to {count}"
        assert self.answered(agg) >= answered_before, f"{tag} stored results lost"
        if self.kind == "broker":
            for name, pid in pids.items():
                proc = c.procs.get(name)
                assert proc is not None and proc.pid == pid and proc.poll() is None, f"{tag} {name} is not the same"
            for name, n in reconnects.items():  # on their own (a clerk held during the restart: once resumed)
                _wait(f"{tag} {name} to reconnect", lambda name=name, n=n: self.log_count(name, "reconnected") > n)
        self.check_messages(agg, tag)
        self.check_ledger(agg, final, tag)
        if victim is not None and victim in self.answered(agg):
            stored = dict(c.store.results(agg))[victim]
            assert self.clerk_processed(victim, agg) == stored, f"{tag} {victim} recorded another result than it sent"
        if phase == "mid-snapshot-few":
            assert final.state == "failed" and "min_participants" in final.error, f"{tag} {final.state}"
        else:
            # Every process comes back well within the deadlines, every stored participation and result is
            # still there: nothing justifies abandoning the round.
            assert final.state == "revealed", f"{tag} {len(stored_before)} participations stored: {final.error}"
        if final.state == "revealed":
            a = self.announce(agg)
            used = self.check_revealed(agg, final, a, stored_before, tag, closed_early=phase.startswith("mid-snapshot"))
            late = sorted({m.clerk_id for m in a.committee} - set(final.result["clerks_used"]))
            what = f"revealed, {len(used)} participants ({len(stored_before)} stored before the fault)"
            if late:
                what += f", late clerks {late}"
        else:
            assert final.error, f"{tag} failed without saying why"
            what = f"failed: {final.error}"
        if victim is not None:
            what += f"; victim {victim} ({'answered' if victim in answered_before else 'had not answered'}" \
                    f" before the kill, {'in' if victim in self.answered(agg) else 'not in'} the result)"
        self.outcomes.append((agg, phase, f"{what} [{time.monotonic() - t0:.1f} s]"))
        if final.state == "failed":
            self.clean_round()  # the services came back on their own: the next round succeeds

    # --- oracles -----------------------------------------------------------------------------

    def check_revealed(self, agg: str, row, a: Announce, stored_before: set[str], tag: str,
                       closed_early: bool = False) -> list[int]:
        """The revealed values are the true sum over exactly the devices of the stored snapshot."""
        S, _ = decode_bitmap(row.bitmap, a.registry_size)
        registry = self.c.store.parties("device")[: a.registry_size]
        used_ids = {registry[int(i)].party_id for i in S}
        used = sorted(int(d.removeprefix("dev")) for d in used_ids)
        res = row.result
        assert res["participants"] == len(used) >= len(stored_before), f"{tag} {res['participants']} participants"
        assert stored_before <= used_ids, f"{tag} stored before the fault, not summed: {stored_before - used_ids}"
        assert used_ids <= self.stored_devices(agg), tag
        assert np.array_equal(np.array(res["values"]), self.c.true_sum(DIM, used)), f"{tag} wrong sum"
        assert res["wrong_clerks"] == [], tag
        unused = self.answered(agg) - set(res["clerks_used"])
        assert not unused, f"{tag} results stored but not used (a clerk that answered counted late): {unused}"
        if closed_early:  # exactly what was stored when collection closed, nothing that came later
            assert used_ids == stored_before, f"{tag} closed with {sorted(stored_before)}, summed {sorted(used_ids)}"
        elif len(used) < DEVICES:  # a round closes before its deadline only once every device is in
            assert res["revealed_at"] >= a.participation_deadline, f"{tag} closed early with {len(used)} devices"
        return used

    def check_messages(self, agg: str, tag: str) -> None:
        """Every job on the wire is the stored one; each clerk sent one result, maybe several times."""
        rec, store = self.recorder, self.c.store
        jobs = dict(store.jobs(agg))
        results = dict(store.results(agg))
        for clerk in self.c.clerk_names:
            for f in rec.seen("job", agg, clerk):
                assert unframe(f) == jobs.get(clerk), f"{tag} a job to {clerk} other than the stored one"
            sent = rec.seen("result", agg, clerk)
            assert len(set(sent)) <= 1, f"{tag} {clerk} sent {len(set(sent))} different results"
            recorded = self.clerk_processed(clerk, agg)
            if sent:
                assert unframe(sent[0]) == recorded, f"{tag} {clerk} sent a result it did not record"
            if clerk in results:
                assert results[clerk] == recorded, f"{tag} the stored result of {clerk} is not what it recorded"

    def check_ledger(self, agg: str, row, tag: str) -> None:
        """Rewards and penalties of the round: each at most once per clerk; every lock released."""
        committee = [m.clerk_id for m in self.announce(agg).committee] if row.announce else []
        used = set(row.result["clerks_used"]) if row.state == "revealed" else set()
        with Ledger(self.c.state / "ledger.db") as ledger:
            assert ledger.total() == 0, tag
            for clerk in self.c.clerk_names:
                history = ledger.history(clerk, 1000)
                rewards = [e for e in history if e.kind == "reward" and e.memo == f"processed {agg}"]
                slashes = [e for e in history if e.kind == "slash" and e.memo.endswith(f" {agg}")]
                assert len(rewards) <= 1 and len(slashes) <= 1, f"{tag} {clerk}: {rewards} {slashes}"
                assert agg not in ledger.locks(clerk), f"{tag} {clerk}'s stake still locked"
                if clerk in used:
                    assert len(rewards) == 1 and not slashes, f"{tag} {clerk} answered: paid once"
                    assert rewards[0].change(clerk, "available") == row.result["participants"], tag
                elif clerk in committee and row.state == "revealed":
                    assert len(slashes) == 1 and not rewards, f"{tag} {clerk} was late: slashed once"
                else:
                    assert not rewards, tag

    def check_logs(self) -> None:
        """No service logged an exception (a fault must be handled, not survived by luck)."""
        for name in ("coordinator", *self.c.clerk_names, *self.fleets):
            text = self.c.logs[name].read_text(errors="replace")
            assert "Traceback" not in text, f"[seed {SEED}] {name} logged an exception:\n{self.c.log_tail(name, 80)}"

    def close(self) -> None:
        self.resume()
        if self.recorder is not None:
            self.recorder.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One process set for every test of this file (the rounds follow each other on it): cheaper than a
    deployment per fault kind, and it shows the services keep working across faults of every kind."""
    c = Cluster(tmp_path_factory.mktemp("faults"), clerks=CLERKS, devices=DEVICES)
    run = FaultRun(c)
    try:
        run.start()
        yield run
    finally:
        run.close()
        c.close()


@pytest.mark.parametrize("kind", ["broker", "coordinator", "clerk"])
def test_a_fault_at_every_phase_of_a_round_loses_nothing(deployment, kind):
    run = deployment
    run.kind = kind
    run.rng = random.Random(f"{SEED}/{kind}")
    run.outcomes = []
    try:
        for phase in PHASES_OF[kind]:
            run.fault_round(phase)
        run.clean_round()
        run.check_logs()
    finally:
        run.resume()
        print(f"\nfault {kind} (seed {SEED}, fleets {run.fleets}):")
        for agg, phase, what in run.outcomes:
            print(f"  {phase:<11} {agg:<28} {what}")


def test_a_fault_at_a_random_instant_of_a_round_loses_nothing(deployment):
    """Faults not aimed at a phase: each kind once, in random order, at a random instant after the request."""
    run = deployment
    run.rng = random.Random(f"{SEED}/random")
    run.outcomes = []
    kinds = ["broker", "coordinator", "clerk"]
    run.rng.shuffle(kinds)
    try:
        for kind in kinds:
            run.kind = kind
            run.random_instant_round()
        run.clean_round()
        run.check_logs()
    finally:
        run.resume()
        print(f"\nfaults at random instants (seed {SEED}):")
        for agg, phase, what in run.outcomes:
            print(f"  {phase:<24} {agg:<28} {what}")

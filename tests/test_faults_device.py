"""Fault injection on the device (DESIGN §9, docs/threat-model.md): `kill -9` of `assistant run` at each point of a
federated-learning round, and a full disk under the device store. Real processes, a real Mosquitto, real SQLite,
real ONNX Runtime; the service is restarted with the same store as systemd's Restart=on-failure would.

- A kill before the announce, after it (but before taking part), right after the device logged that it took part,
  while it waits for the release, and between sda's record of its participation and the privacy ledger's row: the
  round completes with every device counted once, no committed label is lost, the privacy ledger spends the round
  exactly once (before anything is re-sent), and every restarted device installs the release.
- The disk under the store fills while wake words keep coming: the service keeps listening and telling Hermes,
  logs "store full" once per lost clip, keeps every committed label, never leaves a row naming a missing or
  partial clip or a corrupt database, refuses a label with StoreError, comes back when killed and restarted on the
  full disk, and saves again, without a restart, once space is freed.

Which device is killed at which point is drawn with a seeded RNG (FAULT_SEED in the environment replays a run; every
assertion message names the seed and the draw); every point is covered in every run.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from brokers import MosquittoBroker
from cluster import Cluster, Spy, start_inprocess_clerk
from test_learning_cli import current_version, shut_down, status, wait_for, wrong_but_alive
from test_learning_round import direction, make_model, seed_store, validation_set
from test_service import CLIP, LOUD, QUIET, sound
from test_service import make_model as make_energy_model

from assistant.audio import read_audio
from assistant.cli import main
from assistant.errors import StoreError
from assistant.store import Kind, Label, Store
from sda.services.keys import Credentials

ROUND = "learn.hey_snips.1"
# Where a device is killed (the order of the timeline below; which device gets which point is drawn by a seeded RNG).
POINTS = ("before_announce", "after_announce_before_taking_part", "right_after_taking_part", "waiting_for_release",
          "between_recording_and_spending")
DEVICES = len(POINTS) + 1  # and one device left alone


def read(db_path: Path, *queries: str) -> list[list[tuple]]:
    """Each query's rows, read straight from SQLite in this process (as another program would). Retried for a few
    seconds when the open fails: once, under a load average of 50, a reader's open on the full tmpfs failed with
    "unable to open database file" while the service (whose own connection stays open) went on."""
    for attempt in range(50):
        db = sqlite3.connect(db_path, timeout=30)
        try:
            return [db.execute(q).fetchall() for q in queries]
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc) or attempt == 49:
                raise
        finally:
            db.close()
        time.sleep(0.1)
    raise AssertionError("unreachable")


def label_rows(store_dir: Path) -> tuple[list, list]:
    """Every committed label and the label history."""
    labels, history = read(store_dir / "store.db", "SELECT * FROM labels ORDER BY detection_id",
                           "SELECT * FROM label_history ORDER BY seq")
    return labels, history


def joined(store_dir: Path) -> list[str]:
    """The aggregations sda's participation log (beside the store) says this device took part in."""
    if not (store_dir / "participations.db").exists():
        return []
    try:
        return [r[0] for r in read(store_dir / "participations.db", "SELECT aggregation_id FROM participations")[0]]
    except sqlite3.OperationalError:  # its table not created yet
        return []


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


def test_kill_9_of_a_device_at_each_point_of_a_learning_round(tmp_path, capsys):
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 1_000_000))
    rng = np.random.default_rng(seed)
    u = direction()
    shipped = tmp_path / "shipped"
    sha = make_model(shipped, wrong_but_alive(u))
    validation_set(u, sha).save(tmp_path / "validation.npz")
    c = Cluster(tmp_path, clerks=3, devices=DEVICES)
    victims = dict(zip(POINTS, (str(n) for n in rng.permutation(c.device_names[:len(POINTS)])), strict=True))
    why = f"FAULT_SEED={seed}, kill points {victims}"
    clerks, devices, tui, spy = [], {}, None, None

    def start(name: str) -> subprocess.Popen:
        store_dir, log = tmp_path / name / "store", tmp_path / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "run", "--input", "-", "--store",
                                     str(store_dir), "--model", str(shipped), "--credentials",
                                     str(tmp_path / f"{name}.yaml"), "--min-crowd", str(DEVICES)],
                                    stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT)
        devices[name] = (proc, store_dir, log)
        return proc

    def log_of(name: str) -> str:
        return devices[name][2].read_text()

    def started(name: str, times: int) -> None:
        wait_for(lambda: log_of(name).count("takes part in rounds of hey_snips") >= times, 30,
                 f"{name} to start ({why})", lambda: log_of(name))

    labels_before: dict[str, tuple] = {}

    def owner_labels_then_kill(name: str) -> None:
        """The owner labels a new moment in the TUI (a committed label), then the service dies with SIGKILL."""
        proc, store_dir, _ = devices[name]
        with Store(store_dir) as store:
            store.label(store.record_detection(np.zeros(1600, np.int16), 0.5, "shipped", None), Label.UNSURE)
        labels_before[name] = label_rows(store_dir)
        kill9(proc)

    try:
        clerks = [start_inprocess_clerk(c, name) for name in c.clerk_names]
        for i, name in enumerate(c.device_names):
            store_dir = tmp_path / name / "store"
            with Store(store_dir) as store:
                seed_store(store, u, np.random.default_rng(i))
            assert main(["learning", "opt-in", "--budget", "1000", "--store", str(store_dir), "--model",
                         str(shipped)]) == 0
            Credentials(name, "device", c.broker_config(name), "coordinator", c.coordinator_key,
                        c.identity.public().box_key).save(tmp_path / f"{name}.yaml")
            start(name)
        capsys.readouterr()
        for name in c.device_names:
            started(name, 1)

        # before the announce: one device is killed, another is frozen (it cannot read what the broker sends it)
        owner_labels_then_kill(victims["before_announce"])
        name = victims["between_recording_and_spending"]  # its start-up writes done (retention, then this)
        wait_for(lambda: "personal verifier trained" in log_of(name), 30, f"{name}'s writer", lambda: log_of(name))
        tui = sqlite3.connect(devices[name][1] / "store.db", isolation_level=None)
        tui.execute("BEGIN IMMEDIATE")  # the owner's TUI writing (held until the kill below)
        frozen = devices[victims["after_announce_before_taking_part"]][0]
        frozen.send_signal(signal.SIGSTOP)
        spy = Spy(c, f"sda/v1/agg/{ROUND}/participation/#")  # what each device really published
        c._spawn("coordinator", ["-m", "assistant.cli", "coordinator", "--state", str(c.state), "--broker",
                                 c.url("coordinator"), "--model", str(shipped), "--validation",
                                 str(tmp_path / "validation.npz"), "--every", "1", "--rounds", "1",
                                 "--min-participants", str(DEVICES), "--max-participants", str(DEVICES),
                                 "--collect-seconds", "60", "--results-seconds", "30", "--noise-multiplier", "0.1",
                                 "--learning-rate", "0.1", "--grant-stake", "100"])
        c.wait_log("coordinator", f"announced {ROUND}", 30)

        # after the announce, before taking part: the frozen device dies without having read it
        name = victims["after_announce_before_taking_part"]
        assert "sending a gradient" not in log_of(name), why
        owner_labels_then_kill(name)  # still stopped: SIGKILL ends it without it running another instruction
        for name in (victims["before_announce"], victims["after_announce_before_taking_part"]):
            start(name)  # systemd's Restart=on-failure, same store: the retained announce is still up

        # right after it logged that it took part (its participation recorded, the privacy spent)
        name = victims["right_after_taking_part"]
        wait_for(lambda: f"learning round {ROUND}: recorded in the privacy ledger" in log_of(name), 30,
                 f"{name} to take part ({why})", lambda: log_of(name))
        owner_labels_then_kill(name)
        start(name)

        # while waiting for the release: the coordinator holds its participation, no release is out yet
        name = victims["waiting_for_release"]
        wait_for(lambda: name in {p[0] for p in c.store.participations(ROUND)}, 30,
                 f"the coordinator to hold {name}'s participation ({why})", lambda: c.log_tail("coordinator"))
        owner_labels_then_kill(name)
        assert "release 1 published" not in c.logs["coordinator"].read_text(), why
        assert current_version(devices[name][1]) == 0, why
        start(name)

        # between sda's record of the participation and the privacy ledger's row: the owner's TUI holds the store's
        # write lock (a label being saved) just when the ledger commits, and the power goes
        name = victims["between_recording_and_spending"]
        wait_for(lambda: joined(devices[name][1]) == [ROUND], 30, f"{name} to record its participation ({why})",
                 lambda: log_of(name))
        time.sleep(0.2)  # its ledger commit is now waiting for the owner's lock
        assert "recorded in the privacy ledger" not in log_of(name), why
        labels_before[name] = label_rows(tmp_path / name / "store")
        kill9(devices[name][0])
        tui.execute("COMMIT")
        tui.close()
        tui = None
        time.sleep(0.5)  # anything it had published would have reached the spy by now
        assert spy.captured(f"/participation/{name}") == [], why  # nothing left the device unspent
        assert name not in {p[0] for p in c.store.participations(ROUND)}, why
        start(name)

        for name in victims.values():
            started(name, 2)
        coordinator = c.procs["coordinator"]
        assert coordinator.wait(150) == 0, f"{why}\n{c.log_tail('coordinator')}"
        out = c.logs["coordinator"].read_text()
        assert f"round {ROUND}: {DEVICES} devices; release 1 published" in out, f"{why}\n{c.log_tail('coordinator')}"
        assert sorted(p[0] for p in c.store.participations(ROUND)) == c.device_names, why
        assert c.store.aggregation(ROUND).state == "revealed", why

        for name in c.device_names:
            proc, store_dir, log = devices[name]
            wait_for(lambda d=store_dir: current_version(d) == 1, 30, f"{name} to install release 1 ({why})",
                     log.read_text)
            assert proc.poll() is None, f"{why}\n{log.read_text()}"
            text = log.read_text()
            # one gradient per device for the round, whatever the restart: the same bytes re-sent, never a second
            assert text.count(f"learning round {ROUND}: sending a gradient") == 1, f"{why}\n{text}"
            assert text.count(f"learning round {ROUND}: recorded in the privacy ledger") == 1, f"{why}\n{text}"
            assert joined(store_dir) == [ROUND], why
            with Store(store_dir) as store:
                rounds = store.learning_rounds()
            assert [(r.round_id, r.status.value) for r in rounds] == [(ROUND, "completed")], why
            st = status(capsys, store_dir, shipped)
            assert st["rounds_taken"] == 1 and 0 < st["epsilon_spent"] <= 1000, f"{why}: {name} {st}"
            assert st["model_version"] == 1, why
            if name in labels_before:  # every label committed before the kill is still there, unchanged
                assert label_rows(store_dir) == labels_before[name], f"{why}: {name}"
        for proc, _, log in devices.values():
            proc.stdin.close()
            assert proc.wait(30) == 0, f"{why}\n{log.read_text()}"
        # the one killed between record and ledger spent the round on restart, before re-sending the same bytes;
        # killed while its ledger commit waited, not after the commit gave up (the store's 30 s busy timeout)
        text = log_of(victims["between_recording_and_spending"])
        assert "recorded in the privacy ledger on re-sending" in text and "the recorded hook failed" not in text
        assert len({p for _, p in spy.captured("/participation/")}) == DEVICES, why  # one message per device
    finally:
        if spy is not None:
            spy.close()
        if tui is not None:
            tui.close()
        for proc, _, _ in devices.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        shut_down(devices, clerks, c)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs under tmp_path (we run as root), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (run the tests as root, as `make test` does): {mounted.stderr}",
                    pytrace=False)
    yield disk
    if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(filler: Path, leave: int) -> None:
    """Grow `filler` until its disk has at most `leave` bytes free (none: until ENOSPC)."""
    with open(filler, "ab", buffering=0) as fh:
        while (free := free_bytes(filler.parent)) > leave:
            try:
                fh.write(b"\0" * min(1 << 16, max(4096, free - leave)))
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC
                return


def test_a_full_disk_under_the_store_loses_no_label_and_the_service_keeps_listening(tmp_path, tiny_disk):
    import paho.mqtt.client as mqtt

    make_energy_model(tmp_path / "model")
    store_dir, filler, log = tiny_disk / "store", tiny_disk / "filler", tmp_path / "service.log"
    clips = store_dir / "clips"
    # the device's local bus: a real Mosquitto with a user allowed the Hermes topics
    hermes = MosquittoBroker(users=("hermes",))
    with open(hermes.acl_file, "a") as fh:
        fh.write("\nuser hermes\ntopic readwrite hermes/#\n")
    heard: list[bytes] = []  # appended on paho's thread
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="listener", protocol=mqtt.MQTTv311)
    sub.username_pw_set("hermes", hermes.passwords["hermes"])
    sub.on_message = lambda c, ud, msg: heard.append(msg.payload)
    url = f"mqtt://hermes:{hermes.passwords['hermes']}@{hermes.host}:{hermes.port}"
    proc: subprocess.Popen | None = None

    def start() -> subprocess.Popen:
        with open(log, "ab") as fh:
            return subprocess.Popen([sys.executable, "-m", "assistant.cli", "run", "--input", "-", "--store",
                                     str(store_dir), "--model", str(tmp_path / "model"), "--hermes", url],
                                    stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT)

    def listening(times: int) -> None:
        wait_for(lambda: log.read_text().count("assistant: listening to stdin") >= times, 30, "the service", out)

    said = 0

    def say(n: int) -> None:
        """n wake words, each after a quiet stretch (fed as fast as the service reads)."""
        nonlocal said
        for _ in range(n):
            audio = sound((2.5, QUIET), (1, LOUD), seed=said)
            proc.stdin.write(audio.tobytes())
            said += 1
        proc.stdin.write(sound((2.5, QUIET), seed=1000 + said).tobytes())  # the last one's detection completes
        proc.stdin.flush()

    def rows() -> list[tuple]:
        return read(store_dir / "store.db", "SELECT id, clip, clip_missing FROM detections WHERE kind ="
                    f" '{Kind.DETECTION.value}' ORDER BY id")[0]

    def failures() -> int:
        return log.read_text().count("store write failed: store full")

    def out() -> str:
        return f"free {free_bytes(tiny_disk)} bytes; rows {rows()}; clips {sorted(os.listdir(clips))}\n" \
               f"{log.read_text()}"

    def settled(expected: int) -> None:
        """Every detection so far heard (told to Hermes) and handled by the store: saved, or a failure logged."""
        wait_for(lambda: len(heard) == expected and len(rows()) + failures() >= expected, 30,
                 f"{expected} detections handled", out)
        time.sleep(0.5)  # a write still queued would show up here

    try:
        hermes.start()
        sub.connect(hermes.host, hermes.port)
        sub.subscribe("hermes/hotword/hey_snips/detected", qos=1)
        sub.loop_start()
        proc = start()
        listening(1)
        say(2)
        settled(2)
        with Store(store_dir) as store:  # the owner labels them in the TUI
            first = [r[0] for r in rows()]
            store.label(first, Label.TRUE_ACCEPT)
        committed = label_rows(store_dir)
        assert [r[:2] for r in committed[0]] == [(i, "true_accept") for i in first]

        # the disk fills while wake words keep coming: a couple of clips still fit, then none
        fill(filler, 200_000)
        say(6)
        settled(8)
        assert proc.poll() is None, out()
        saved = rows()
        lost = 8 - len(saved)
        assert lost >= 1 and failures() >= lost, f"the disk never filled: {out()}"
        assert "Traceback" not in log.read_text(), out()  # one line per lost clip, no stack dump
        assert failures() <= 6, out()  # at most one line per write
        assert not list(clips.glob("*.partial")), f"a failed write left its partial clip behind: {out()}"

        # labelling on a full disk: StoreError, nothing half-done, no earlier label lost
        fill(filler, 0)
        with Store(store_dir) as store, pytest.raises(StoreError, match="store full"):
            store.label([r[0] for r in saved], Label.FALSE_ACCEPT)
        assert label_rows(store_dir) == committed, out()

        # the power goes while the disk is full: the service comes back on the same full store and keeps listening
        proc.kill()
        assert proc.wait(10) == -9
        proc = start()
        listening(2)
        before = failures()
        say(1)
        settled(9)
        assert failures() == before + 1 and rows() == saved, out()

        # space comes back (the owner deletes something): new detections are saved again, without a restart
        filler.unlink()
        say(3)
        settled(12)
        assert len(rows()) == len(saved) + 3, out()
        assert proc.poll() is None, out()
        with Store(store_dir) as store:
            store.label([r[0] for r in rows()[-3:]], Label.FALSE_ACCEPT)

        proc.stdin.close()
        assert proc.wait(30) == 0, out()
        assert "summary:" in log.read_text() and ", 4 detections" in log.read_text(), out()  # since the restart
        assert len(heard) == 12  # Hermes heard every wake word, the full disk notwithstanding
        assert "Traceback" not in log.read_text(), out()  # every failure on the full disk named in one line
        assert not list(store_dir.rglob("*.partial")), out()  # no temporary file kept the space

        # the database is whole, no row names a missing or partial clip, no file is left over
        check, labelled, all_clips = read(store_dir / "store.db", "PRAGMA integrity_check",
                                          "SELECT detection_id, label FROM labels",
                                          "SELECT clip FROM detections WHERE clip IS NOT NULL")
        assert check == [("ok",)]
        labels = dict(labelled)
        assert [(i, labels.get(i)) for i, *_ in committed[0]] == [(i, "true_accept") for i in first]
        final = rows()
        assert all(missing == 0 and clip is not None for _, clip, missing in final), out()
        assert sorted(os.listdir(clips)) == sorted(c for (c,) in all_clips), out()
        for _, clip, _ in final:
            assert len(read_audio(clips / clip)) == CLIP
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.loop_stop()
        sub.disconnect()
        hermes.stop()
        hermes.cleanup()


def _learning_device(tmp_path: Path, broker: MosquittoBroker, password: str) -> tuple[subprocess.Popen, Path]:
    """`assistant run` of an opted-in device whose learning broker is `broker` (started or not); (process, log)."""
    from sda import crypto
    from sda.mqtt.transport import BrokerConfig

    shipped = tmp_path / "shipped"
    make_model(shipped, wrong_but_alive(direction()))
    store_dir = tmp_path / "store"
    with Store(store_dir):
        pass
    assert main(["learning", "opt-in", "--budget", "10", "--store", str(store_dir), "--model", str(shipped)]) == 0
    coordinator = crypto.Identity.generate().public()
    cred = tmp_path / "dev0.yaml"
    Credentials("dev0", "device", BrokerConfig(broker.host, broker.port, "dev0", password), "coordinator",
                coordinator.sign_key, coordinator.box_key).save(cred)
    log = tmp_path / "dev0.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "run", "--input", "-", "--store",
                                 str(store_dir), "--model", str(shipped), "--credentials", str(cred)],
                                stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT)
    return proc, log


def test_a_device_whose_broker_is_down_listens_at_once_and_joins_when_it_comes_up(tmp_path, capsys):
    """Power comes back and the Pi is up before the router: the service listens (and says so) without its learning
    broker, and registers with it, from the same process, once the broker answers. A broker that answers and
    refuses the login still stops the service, as a wrong password should."""
    import paho.mqtt.client as mqtt

    from sda.mqtt import topics

    broker = MosquittoBroker(users=("coordinator", "dev0"))  # its port is chosen, nothing listens there yet
    proc, log = _learning_device(tmp_path, broker, broker.passwords["dev0"])
    try:
        text = lambda: log.read_text(errors="replace")  # noqa: E731
        wait_for(lambda: "listening anyway" in text() and "listening to" in text(), 60, "the service to listen",
                 text)
        assert proc.poll() is None
        broker.start()
        wait_for(lambda: "connected after the broker came back" in text(), 60, "the device to connect", text)
        assert "takes part in rounds of" in text()
        got: list[str] = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="check")
        sub.username_pw_set("coordinator", broker.passwords["coordinator"])
        sub.on_message = lambda c, u, m: got.append(m.topic)
        sub.connect(broker.host, broker.port)
        sub.subscribe(topics.registration("dev0"), qos=1)
        sub.loop_start()
        try:
            wait_for(lambda: got, 20, "the device's retained registration", text)
        finally:
            sub.loop_stop()
            sub.disconnect()
        proc.stdin.close()
        assert proc.wait(30) == 0, text()
        assert "Traceback" not in text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        broker.cleanup()

    refused = MosquittoBroker(users=("coordinator", "dev0")).start()
    try:
        proc, log = _learning_device(tmp_path / "refused", refused, "not-the-password")
        assert proc.wait(60) == 1, log.read_text()
        assert "cannot reach the broker" in log.read_text() and "listening anyway" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        refused.cleanup()


def test_retrying_a_silent_broker_stops_on_request_and_on_a_refused_login(tmp_path, caplog):
    """StartWhenReachable with the real analytics connection: stop() while it waits for a silent broker ends its
    thread with nothing connected; a broker that, once up, refuses the login ends the tries with one error."""
    import logging

    from assistant.learning.device import DeviceAnalytics, LearningConfig, StartWhenReachable
    from sda import crypto

    broker = MosquittoBroker(users=("dev0",))  # not started yet
    key = crypto.Identity.generate().public().sign_key.hex()
    with Store(tmp_path / "store") as store:
        def make(password: str):
            config = LearningConfig.from_url(f"mqtt://dev0:{password}@{broker.host}:{broker.port}", key,
                                             tmp_path / "device.key", "hey_snips")
            return lambda: DeviceAnalytics(store, config)

        waiting = StartWhenReachable(make(broker.passwords["dev0"]), "analytics", first_pause_s=0.2).start()
        assert waiting.connection is None and waiting._thread.is_alive()
        time.sleep(1.0)  # a few tries against nothing
        started = time.monotonic()
        waiting.stop()
        assert not waiting._thread.is_alive() and waiting.connection is None
        assert time.monotonic() - started < 15

        refusals: list[int] = []
        with caplog.at_level(logging.INFO, logger="assistant.learning.device"):
            refused = StartWhenReachable(make("wrong"), "analytics", on_unreachable=lambda: refusals.append(1),
                                         first_pause_s=0.5).start()
            try:
                assert refusals == [1]
                broker.start()
                refused._thread.join(30)
                assert not refused._thread.is_alive() and refused.connection is None
            finally:
                refused.stop()
                broker.cleanup()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "no more tries" in errors[0].getMessage(), caplog.text

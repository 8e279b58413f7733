"""The owner's and the developer's commands for federated learning, through the real entry points with real
SQLite: `assistant learning status|opt-in|opt-out|rollback` over a device store, and, over a real Mosquitto,
`assistant coordinator` running a learning round that devices started with `assistant run --credentials ...`
take part in, ending in a signed release every device installs (and one owner rolls back)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from cluster import Cluster, start_inprocess_clerk
from test_learning_round import (
    EMBED,
    HIDDEN,
    LABELS,
    WINDOW,
    direction,
    make_model,
    seed_store,
    shipped_head,
    validation_set,
)

from assistant.cli import main
from assistant.kws.head import Head
from assistant.store import Label, Store
from sda.services.keys import Credentials

DEVICES = 3


def wrong_but_alive(u: np.ndarray) -> Head:
    """test_learning_round's head (fires along -u), with biases that keep every hidden unit alive on the positives
    too: one FedAdam step then helps the accuracy on every device's labels, not only the loss, and each device's
    local check accepts the release (with dead units it lowers the accuracy at 0.5 before it raises it)."""
    h = shipped_head(u)
    return Head(h.W1, np.full(HIDDEN, 1.0), h.w2, np.array(-2.0), WINDOW, EMBED)


def status(capsys, store_dir, model) -> dict:
    assert main(["learning", "status", "--store", str(store_dir), "--model", str(model), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_learning_status_opt_in_and_out_and_errors_over_a_real_store(tmp_path, capsys):
    u = direction()
    make_model(tmp_path / "model", shipped_head(u))
    store_dir = tmp_path / "store"
    assert main(["learning", "status", "--store", str(store_dir)]) == 1
    assert "no store in" in capsys.readouterr().err
    with Store(store_dir) as store:
        seed_store(store, u, np.random.default_rng(0))
        store.label(store.record_detection(np.zeros(1600, np.int16), 0.9, "m", None), Label.UNSURE)

    st = status(capsys, store_dir, tmp_path / "model")
    assert st["opted_in"] is False and st["epsilon_spent"] == 0 and st["epsilon_budget"] == 8.0
    assert st["labels"] == LABELS + 1 and st["labels_waiting"] == LABELS  # "unsure" and no embeddings: not usable
    assert st["model_version"] is None and st["can_roll_back"] is False and st["rounds_taken"] == 0

    assert main(["learning", "opt-in", "--budget", "4", "--store", str(store_dir), "--model",
                 str(tmp_path / "model")]) == 0
    assert "opted in: epsilon 0.000 spent of a budget of 4" in capsys.readouterr().out
    st = status(capsys, store_dir, tmp_path / "model")
    assert st["opted_in"] is True and st["epsilon_budget"] == 4.0
    with Store(store_dir) as store:
        assert store.settings().learning_opt_in and store.settings().epsilon_budget == 4.0

    assert main(["learning", "opt-in", "--budget", "-1", "--store", str(store_dir)]) == 1
    assert "--budget -1" in capsys.readouterr().err
    assert main(["learning", "opt-out", "--budget", "3", "--store", str(store_dir)]) == 1
    assert "--budget goes with opt-in" in capsys.readouterr().err
    assert main(["learning", "opt-out", "--store", str(store_dir), "--model", str(tmp_path / "model")]) == 0
    assert "opted out" in capsys.readouterr().out
    assert status(capsys, store_dir, tmp_path / "model")["opted_in"] is False
    assert status(capsys, store_dir, tmp_path / "model")["epsilon_budget"] == 4.0  # opting out keeps the budget

    assert main(["learning", "rollback", "--store", str(store_dir)]) == 1
    assert "no release was ever installed" in capsys.readouterr().err
    assert main(["learning", "status", "--store", str(store_dir), "--model", str(tmp_path / "model")]) == 0
    text = capsys.readouterr().out
    assert "not opted in" in text and "the shipped model" in text and "nothing to go back to" in text


def test_run_refuses_half_the_learning_flags(tmp_path, capsys):
    make_model(tmp_path / "model", shipped_head(direction()))
    code = main(["run", "--input", "-", "--store", str(tmp_path / "store"), "--model", str(tmp_path / "model"),
                 "--broker", "mqtt://dev0:pw@127.0.0.1:1"])
    assert code == 1 and "--coordinator-key" in capsys.readouterr().err
    code = main(["run", "--input", "-", "--store", str(tmp_path / "store"), "--model", str(tmp_path / "model"),
                 "--broker", "mqtt://dev0:pw@127.0.0.1:1", "--coordinator-key", "abcd"])
    assert code == 1 and "64 hex digits" in capsys.readouterr().err


def wait_for(check, timeout_s: float, what: str, logs=None):
    end = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}\n{logs() if logs else ''}")
        time.sleep(0.1)
    return value


def current_version(store_dir) -> int:
    return int(os.readlink(store_dir / "models" / "current").rsplit("/", 1)[-1])


def test_assistant_coordinator_and_devices_run_with_the_learning_flags_complete_a_round(tmp_path, capsys):
    u = direction()
    shipped = tmp_path / "shipped"
    sha = make_model(shipped, wrong_but_alive(u))
    validation_set(u, sha).save(tmp_path / "validation.npz")
    c = Cluster(tmp_path, clerks=3, devices=DEVICES + 1)
    clerks, devices = [], {}
    try:
        clerks = [start_inprocess_clerk(c, name) for name in c.clerk_names]
        for i, name in enumerate(c.device_names):
            store_dir = tmp_path / name / "store"
            with Store(store_dir) as store:
                seed_store(store, u, np.random.default_rng(i))
            if i < DEVICES:  # the last device runs with the flags but has not opted in
                assert main(["learning", "opt-in", "--budget", "1000", "--store", str(store_dir), "--model",
                             str(shipped)]) == 0
            cred = tmp_path / f"{name}.yaml"
            Credentials(name, "device", c.broker_config(name), "coordinator", c.coordinator_key,
                        c.identity.public().box_key).save(cred)
            log = tmp_path / f"{name}.log"
            with open(log, "wb") as fh:
                proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "run", "--input", "-", "--store",
                                         str(store_dir), "--model", str(shipped), "--credentials", str(cred),
                                         "--min-crowd", str(DEVICES)],
                                        stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT)
            devices[name] = (proc, store_dir, log)
        capsys.readouterr()
        for name, (_, _, log) in devices.items():
            text = "takes part in rounds of hey_snips" if name != c.device_names[-1] else "not opted in"
            wait_for(lambda log=log, text=text: text in log.read_text(), 30, f"{name} to start", log.read_text)

        c._spawn("coordinator", ["-m", "assistant.cli", "coordinator", "--state", str(c.state), "--broker",
                                 c.url("coordinator"), "--model", str(shipped), "--validation",
                                 str(tmp_path / "validation.npz"), "--every", "3", "--rounds", "1",
                                 "--min-participants", str(DEVICES), "--max-participants", str(DEVICES),
                                 "--collect-seconds", "20", "--results-seconds", "20", "--noise-multiplier", "0.1",
                                 "--learning-rate", "0.1", "--grant-stake", "100"])
        coordinator = c.procs["coordinator"]
        assert coordinator.wait(60) == 0, c.log_tail("coordinator")
        out = c.logs["coordinator"].read_text()
        assert f"round learn.hey_snips.1: {DEVICES} devices; release 1 published, central (epsilon, delta) = (" \
            in out, c.log_tail("coordinator")

        # every opted-in device installed the release from the retained topic and hot-swapped it in
        for name, (_, store_dir, log) in list(devices.items())[:DEVICES]:
            wait_for(lambda d=store_dir: current_version(d) == 1, 20, f"{name} to install release 1", log.read_text)
            st = status(capsys, store_dir, shipped)
            assert st["opted_in"] and st["model_version"] == 1 and st["installed_versions"] == [0, 1]
            assert st["can_roll_back"] and st["rounds_taken"] == 1 and 0 < st["epsilon_spent"] <= 1000
            assert st["labels_waiting"] == 0  # all learned from in the round
        # the one not opted in sent nothing and installed nothing
        _, store_dir, _ = devices[c.device_names[-1]]
        st = status(capsys, store_dir, shipped)
        assert st["rounds_taken"] == 0 and st["epsilon_spent"] == 0 and st["model_version"] == 0

        # the owner of dev0 rolls back while its service runs: it reloads the previous model at once
        proc, store_dir, log = devices["dev0"]
        assert main(["learning", "rollback", "--store", str(store_dir)]) == 0
        out = capsys.readouterr().out
        assert "rolled back from version 1 to 0" in out and "the running service reloaded" in out
        assert current_version(store_dir) == 0
        st = status(capsys, store_dir, shipped)
        assert st["model_version"] == 0 and not st["can_roll_back"]
        for proc, _, log in devices.values():
            proc.stdin.close()
            assert proc.wait(20) == 0, log.read_text()
            assert "summary: 0 frames" in log.read_text()
    finally:
        shut_down(devices, clerks, c)



def shut_down(devices: dict, clerks: list, cluster) -> None:
    """Kill the device processes still running, stop the clerks, close the cluster."""
    for proc, _, _ in devices.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for clerk in clerks:
        clerk.stop()
    cluster.close()

def test_the_coordinator_key_comes_as_hex_or_a_file_of_sda_coordinator_keys(tmp_path):
    from assistant.errors import AssistantError
    from assistant.learning.device import LearningConfig, read_coordinator_key

    state = tmp_path / "coordinator"
    out = subprocess.run([sys.executable, "-m", "sda.cli", "coordinator", "keys", "--state", str(state)],
                         capture_output=True, text=True, check=True)
    (tmp_path / "keys.json").write_text(out.stdout)
    key = bytes.fromhex(json.loads(out.stdout)["sign_key"])
    (tmp_path / "key.hex").write_text(key.hex() + "\n")
    assert read_coordinator_key(key.hex()) == key
    assert read_coordinator_key(str(tmp_path / "key.hex")) == key
    assert read_coordinator_key(str(tmp_path / "keys.json")) == key
    config = LearningConfig.from_url("mqtt://dev7:secret@127.0.0.1:1883", str(tmp_path / "keys.json"),
                                     tmp_path / "device.key", "hey_snips", min_crowd=50)
    assert (config.device_id, config.broker.password, config.coordinator_sign_key) == ("dev7", "secret", key)
    (tmp_path / "bad.json").write_text('{"box_key": "00"}')
    with pytest.raises(AssistantError, match="no \"sign_key\""):
        read_coordinator_key(str(tmp_path / "bad.json"))
    with pytest.raises(AssistantError, match="64 hex digits"):
        read_coordinator_key(str(tmp_path / "nothing-here"))
    with pytest.raises(AssistantError, match=r"model id 'a\.b'"):
        LearningConfig.from_url("mqtt://dev7:pw@127.0.0.1", key.hex(), tmp_path / "k", "a.b")
    with pytest.raises(AssistantError, match="min_crowd 1"):
        LearningConfig.from_url("mqtt://dev7:pw@127.0.0.1", key.hex(), tmp_path / "k", "hey_snips", min_crowd=1)
    with pytest.raises(AssistantError, match="names no user"):
        LearningConfig.from_url("mqtt://127.0.0.1", key.hex(), tmp_path / "k", "hey_snips")

"""`assistant doctor`: each check finds its problem on the real thing (a file, PortAudio, a tampered model, a key's
mode, a real Mosquitto with and without TLS) and names the fix."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from assistant import doctor
from assistant.cli import main
from assistant.config import parse_config
from assistant.doctor import check_audio, check_broker, check_clock, check_disk, check_keys, check_model
from sda.mqtt.transport import BrokerConfig
from sda.services.keys import Credentials

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "tests" / "data" / "kws" / "positive_hey_snips_en-us_female2.wav"
SHIPPED = ROOT / "models" / "hey_snips"


def cfg(tmp_path, text: str = ""):
    return parse_config(f"store: {{dir: {tmp_path / 'store'}}}\n{text}")


def credentials(tmp_path, broker: BrokerConfig, name: str = "dev1") -> Path:
    path = tmp_path / f"{name}.yaml"
    Credentials(name, "device", broker, "coordinator", bytes(32), bytes(32)).save(path)
    return path


def test_a_healthy_device_passes_every_check(tmp_path, capsys, mosquitto):
    cred = credentials(tmp_path, BrokerConfig("127.0.0.1", mosquitto.port, "dev1", mosquitto.passwords["dev1"]))
    config = tmp_path / "assistant.yaml"
    config.write_text(f"audio: {{input: {CLIP}}}\nstore: {{dir: {tmp_path / 'store'}}}\n"
                      f"learning: {{credentials: {cred}}}\n")
    assert main(["doctor", "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    checks = {f["check"]: f for f in report["findings"]}
    assert report["ok"] and set(checks) == {"config", "audio", "model", "disk", "keys", "clock", "broker"}
    assert all(f["status"] in ("ok", "warn") for f in report["findings"]), report
    broker = [f["detail"] for f in report["findings"] if f["check"] == "broker"]
    assert broker[0] == f"127.0.0.1:{mosquitto.port} reachable, no TLS" and broker[1].startswith("logged in as dev1")
    assert not (tmp_path / "store").exists()  # the doctor only looks


def test_a_bad_configuration_fails_first(tmp_path, capsys):
    config = tmp_path / "assistant.yaml"
    config.write_text("model: {threshold: 2}\n")
    assert main(["doctor", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  config   model.threshold: got 2" in out and f"fix: edit {config}" in out


def test_audio(tmp_path):
    assert check_audio(cfg(tmp_path, f"audio: {{input: {CLIP}}}")).status == "ok"
    bad = tmp_path / "stereo.wav"
    bad.write_bytes(b"RIFF....not audio")
    f = check_audio(cfg(tmp_path, f"audio: {{input: {bad}}}"))
    assert f.status == "fail" and "16 kHz mono" in f.fix
    f = check_audio(cfg(tmp_path, "audio: {device: no-such-microphone-anywhere}"))
    assert f.status == "fail" and "no usable microphone" in f.detail and "arecord -l" in f.fix


def test_a_tampered_model_file_is_found(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model)
    assert check_model(cfg(tmp_path, f"model: {{dir: {model}}}")).status == "ok"
    head = model / "head.npz"
    data = bytearray(head.read_bytes())
    data[-100] ^= 1
    head.write_bytes(bytes(data))
    f = check_model(cfg(tmp_path, f"model: {{dir: {model}}}"))
    assert f.status == "fail" and "head.npz" in f.detail and "model.dir" in f.fix


def test_keys_mode_and_size(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    key = store / "device.key"
    assert check_keys(cfg(tmp_path))[0].status == "ok"  # none yet: made on first use
    key.write_bytes(os.urandom(64))
    key.chmod(0o600)
    assert check_keys(cfg(tmp_path))[0].status == "ok"
    key.chmod(0o644)
    f = check_keys(cfg(tmp_path))[0]
    assert f.status == "fail" and "0644" in f.detail and f.fix == f"chmod 600 {key}"
    key.chmod(0o600)
    key.write_bytes(os.urandom(10))
    f = check_keys(cfg(tmp_path))[0]
    assert f.status == "fail" and "10 bytes, not 64" in f.detail


def test_disk_space_below_the_floor_fails(tmp_path, monkeypatch):
    assert check_disk(cfg(tmp_path)).status == "ok"
    monkeypatch.setattr(doctor, "MIN_FREE_BYTES", shutil.disk_usage(tmp_path).free * 10)
    f = check_disk(cfg(tmp_path))
    assert f.status == "fail" and "retention" in f.fix


def test_clock():
    f = check_clock(now=0.0)
    assert f.status == "fail" and "1970-01-01" in f.detail and "timedatectl set-ntp true" in f.fix
    assert check_clock(now=doctor.EARLIEST_PLAUSIBLE + 86400, ntp=lambda: "no").status == "warn"
    assert check_clock(now=doctor.EARLIEST_PLAUSIBLE + 86400, ntp=lambda: "yes").detail.endswith("NTP synchronised")


def test_broker_unreachable_and_wrong_password(tmp_path, mosquitto):
    from brokers import free_port

    closed = credentials(tmp_path, BrokerConfig("127.0.0.1", free_port(), "dev1", "x"))
    (f,) = check_broker(cfg(tmp_path, f"learning: {{credentials: {closed}}}"), timeout_s=3)
    assert f.status == "fail" and f.detail.startswith("cannot reach 127.0.0.1:") and "Mosquitto runs" in f.fix
    wrong = credentials(tmp_path, BrokerConfig("127.0.0.1", mosquitto.port, "dev1", "wrong"))
    reach, login = check_broker(cfg(tmp_path, f"learning: {{credentials: {wrong}}}"), timeout_s=5)
    assert reach.status == "ok" and login.status == "fail" and "refused" in login.detail
    assert "sda admin add-device" in login.fix


def test_broker_over_tls(tmp_path):
    from brokers import MosquittoBroker, free_port
    from test_acl import _test_ca

    ca, crt, key = _test_ca(tmp_path)
    port = free_port()
    tls = {"port": port, "cafile": ca, "certfile": crt, "keyfile": key, "require_certificate": False}
    with MosquittoBroker(("coordinator", "dev1"), tls=tls) as b:
        good = credentials(tmp_path, BrokerConfig("127.0.0.1", port, "dev1", b.passwords["dev1"], tls_ca=str(ca)))
        reach, login = check_broker(cfg(tmp_path, f"learning: {{credentials: {good}}}"))
        assert reach.status == "ok" and "TLS" in reach.detail and "certificate valid" in reach.detail
        assert login.status == "ok", login
        untrusted = credentials(tmp_path, BrokerConfig("127.0.0.1", port, "dev1", "x", tls_ca=str(crt)), "dev2")
        (f,) = check_broker(cfg(tmp_path, f"learning: {{credentials: {untrusted}}}"))
        assert f.status == "fail" and "not trusted" in f.detail and "CA" in f.fix


def test_no_learning_configured_means_no_broker_to_check(tmp_path):
    (f,) = check_broker(cfg(tmp_path))
    assert f.status == "ok" and "not configured" in f.detail


def test_a_broker_without_the_coordinators_key_is_refused(tmp_path):
    (f,) = check_broker(cfg(tmp_path, "learning: {broker: 'mqtt://dev1:pw@127.0.0.1:1'}"))
    assert f.status == "fail" and "coordinator key" in f.detail and "assistant config check" in f.fix


def test_credentials_may_be_read_by_the_services_group_but_not_by_others(tmp_path):
    cred = credentials(tmp_path, BrokerConfig("127.0.0.1", 1883, "dev1", "pw"))
    config = cfg(tmp_path, f"learning: {{credentials: {cred}}}")
    cred.chmod(0o640)
    assert check_keys(config)[1].status == "ok"
    cred.chmod(0o644)
    f = check_keys(config)[1]
    assert f.status == "fail" and "0644" in f.detail and f.fix == f"chmod 640 {cred}"

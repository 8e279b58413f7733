"""`assistant run` and its control channel on real processes, real SQLite, real ONNX Runtime and real Unix
sockets: detections and near misses saved with their clips and embeddings, status, capture, a hot model
reload that drops no frame, bad requests answered without harm, a clean stop on SIGTERM, and the owner
labelling in another process while the service writes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from test_kws import energy_backbone

from assistant.audio import FRAME_SAMPLES, SAMPLE_RATE, read_audio, write_wav
from assistant.control import MAX_REQUEST_BYTES, ControlClient, ControlServer
from assistant.errors import ControlError
from assistant.kws.backbone import sha256_file
from assistant.kws.head import Head
from assistant.kws.model import load_model
from assistant.service import DeviceService, NearMissTracker, ServiceConfig, default_store_dir
from assistant.store import Kind, Label, Store
from sda.mqtt.broker import EmbeddedBroker

# The energy model of test_detect_cli: logit = 24 x mean log-mel energy - 30, steep in the noise's std. With
# the card's threshold at 0.99 (logit 4.6) a 12000-std burst fires (logit ~75); a 2600-std one scores logits
# 0.8..3.8, inside a near-miss band of 0.9 (scores [0.09, 0.99), logits from -2.3); near silence scores 0.
THRESHOLD = 0.99
BAND = 0.9
LOUD, MEDIUM, QUIET = 12000, 2600, 30
CLIP = 2 * SAMPLE_RATE + FRAME_SAMPLES  # the default pre-roll and the frame that fired


def make_model(d, b2: float = -30.0) -> str:
    """A model directory the service accepts (files hashed in card.json); its version."""
    d.mkdir(parents=True, exist_ok=True)
    energy_backbone(d / "backbone.onnx")
    Head(W1=np.full((12, 1), 1.0), b1=np.zeros(1), w2=np.array([2.0]), b2=np.array(b2), window=3,
         embed=4).save(d / "head.npz")
    files = {n: {"sha256": sha256_file(d / n), "bytes": (d / n).stat().st_size} for n in ("backbone.onnx", "head.npz")}
    (d / "card.json").write_text(json.dumps({"wakeword": "hey snips", "files": files, "threshold": THRESHOLD}))
    return load_model(d).version


def sound(*parts: tuple[float, float], seed: int = 0) -> np.ndarray:
    """Concatenated (seconds, std) stretches of Gaussian noise, int16."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.standard_normal(round(s * SAMPLE_RATE)) * std for s, std in parts]).astype(np.int16)


def n_frames(audio: np.ndarray) -> int:
    return -(-len(audio) // FRAME_SAMPLES)


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "assistant.cli", "run", *map(str, args)]


def summary(stdout: str) -> tuple[int, int, int]:
    m = re.search(r"summary: (\d+) frames .*, (\d+) detections?, (\d+) near miss", stdout)
    assert m, stdout
    return int(m[1]), int(m[2]), int(m[3])


def wait_for(check, timeout_s: float = 20.0, what: str = "condition"):
    end = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
            if value:
                return value
        except ControlError:
            pass
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def rows(store_dir, kind: Kind) -> list:
    with Store(store_dir) as store:
        return sorted((r for r in store.review_queue(False, limit=10_000) if r.kind == kind), key=lambda r: r.id)


def raw(path, payload: bytes) -> list[dict]:
    """Send raw bytes on one connection; every response line until the service closes or goes quiet."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(str(path))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_run_saves_each_detection_with_its_clip_and_embeddings_and_tells_hermes(tmp_path):
    import paho.mqtt.client as mqtt

    version = make_model(tmp_path / "model")
    audio = sound((3, QUIET), (1, LOUD), (3, QUIET), (1, LOUD), (2, QUIET))
    write_wav(tmp_path / "clip.wav", audio)
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a socket file a killed service left behind
    stale.bind(str(store_dir / "control.sock"))
    stale.close()
    got, done = [], threading.Event()
    with EmbeddedBroker() as broker:
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="listener", protocol=mqtt.MQTTv311)
        sub.on_message = lambda c, ud, msg: (got.append(json.loads(msg.payload)), len(got) == 2 and done.set())
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("hermes/hotword/hey_snips/detected", qos=1)
        sub.loop_start()
        try:
            out = subprocess.run(cli("--input", tmp_path / "clip.wav", "--store", store_dir, "--model",
                                     tmp_path / "model", "--hermes", broker.url),
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert done.wait(10)
        finally:
            sub.loop_stop()
            sub.disconnect()
    lines = [x for x in out.stdout.splitlines() if "hey_snips  score" in x]
    assert len(lines) == 2 and 3.0 < float(lines[0].split()[1]) < 3.5 and 7.0 < float(lines[1].split()[1]) < 7.5
    assert summary(out.stdout) == (n_frames(audio), 2, 0)
    assert "stale socket" in out.stderr and not (store_dir / "control.sock").exists()
    assert [(m["modelVersion"], m["modelId"]) for m in got] == [(version, "hey_snips")] * 2
    detections = rows(store_dir, Kind.DETECTION)
    assert len(detections) == 2
    with Store(store_dir) as store:
        for r in detections:
            assert r.model_version == version and r.score >= THRESHOLD
            assert r.embeddings.shape == (3, 4) and r.embeddings.min() > 0  # the head's window, all loud
            clip = read_audio(store.clip_path(r))
            assert len(clip) == CLIP
            # the pre-roll is the quiet before the burst; the clip ends in the frame that fired
            assert np.abs(clip[: SAMPLE_RATE]).max() < 1000 and clip[-FRAME_SAMPLES:].std() > LOUD / 3


def test_near_misses_one_per_utterance_at_its_peak_and_within_the_daily_quota(tmp_path):
    make_model(tmp_path / "model")
    # six utterances that come close, one that fires, one too faint to matter
    audio = sound((3, QUIET), *[p for _ in range(6) for p in ((1, MEDIUM), (1.5, QUIET))], (1, LOUD), (2, QUIET),
                  (1, 1000), (1, QUIET), seed=3)
    write_wav(tmp_path / "close.wav", audio)
    store_dir = tmp_path / "store"
    with Store(store_dir) as store:
        store.update_settings(near_miss_daily_quota=8, near_miss_band=BAND)

    def run() -> tuple[int, int, int]:
        out = subprocess.run(cli("--input", tmp_path / "close.wav", "--store", store_dir, "--model",
                                 tmp_path / "model"), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return summary(out.stdout)

    assert run() == (n_frames(audio), 1, 6)
    near = rows(store_dir, Kind.NEAR_MISS)
    assert len(near) == 6
    with Store(store_dir) as store:
        for r in near:
            assert THRESHOLD - BAND <= r.score < THRESHOLD and r.embeddings.shape == (3, 4)
            assert len(read_audio(store.clip_path(r))) == CLIP
    assert run() == (n_frames(audio), 1, 2)  # the quota: 8 a day, across runs
    assert len(rows(store_dir, Kind.NEAR_MISS)) == 8 and len(rows(store_dir, Kind.DETECTION)) == 2


def test_near_miss_tracker_keeps_the_peak_and_nothing_from_a_detected_run():
    nm: NearMissTracker[int] = NearMissTracker(window_s=2.0)

    def feed(scores, detected_at=None, t0=0.0):
        out = [nm.update(t0 + 0.08 * i, s, 0.69, 0.99, i == detected_at, lambda i=i: i)
               for i, s in enumerate(scores)]
        return [x for x in out if x is not None]

    assert feed([0.1, 0.7, 0.9, 0.8, 0.1]) == [(0.9, 2)]  # peak of the run, when the run ends
    assert feed([0.1, 0.8, 0.995, 0.9, 0.8, 0.1], detected_at=2) == []  # the detector fired in it
    long_run = feed([0.8] * 60 + [0.1], t0=100.0)  # 4.8 s hovering in the band: one per 2 s window
    assert len(long_run) == 3
    assert feed([0.75]) == [] and nm.flush() == (0.75, 0)


def test_control_status_capture_reload_and_bad_requests(tmp_path):
    model = tmp_path / "model"
    v1 = make_model(model)
    store_dir = tmp_path / "store"
    sock = store_dir / "control.sock"
    proc = subprocess.Popen(cli("--input", "-", "--store", store_dir, "--model", model), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
    client = ControlClient(sock)
    fed = 0

    def feed(audio: np.ndarray, frame_s: float = 0.0) -> None:
        nonlocal fed
        for i in range(0, len(audio), FRAME_SAMPLES):
            proc.stdin.write(audio[i : i + FRAME_SAMPLES].tobytes())
            proc.stdin.flush()
            fed += 1
            time.sleep(frame_s)

    def processed(n: int) -> dict:
        return wait_for(lambda: (s := client.status())["frames"] == n and s, what=f"{n} frames processed")

    try:
        st = wait_for(client.status, what="the service")
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert (st["model_version"], st["wakeword"], st["threshold"], st["source"]) == (v1, "hey snips", THRESHOLD,
                                                                                           "stdin")
        assert st["frames"] == 0 and st["uptime_s"] >= 0
        with pytest.raises(ControlError, match="nothing heard yet"):
            client.capture(2)

        feed(sound((3, QUIET), (1, LOUD), (2, QUIET)))
        st = processed(fed)
        assert st["detections"] == 1
        row = client.capture(3)
        with Store(store_dir) as store:
            r = store.get(row)
            assert r.kind == Kind.CAPTURED_MISS and r.model_version == v1 and r.score > THRESHOLD
            assert len(read_audio(store.clip_path(r))) == 3 * SAMPLE_RATE
            assert r.embeddings.shape == (38, 4)  # one per frame of those 3 s
        for bad in (0.5, 11, "3", None):
            with pytest.raises(ControlError, match="capture"):
                client.request({"cmd": "capture", "seconds": bad})

        # bad requests: each answered with an error, the connection kept (but for the oversized one)
        answers = raw(sock, b"not json\n[1, 2]\n" + b"[" * 4000 + b"\n\xff\xfe\n{\"cmd\": \"dance\"}\n"
                      b"{\"cmd\": \"status\", \"x\": 1}\n{\"cmd\": \"status\"}\n")
        assert [a["ok"] for a in answers] == [False] * 6 + [True]
        assert "unknown command 'dance'" in answers[4]["error"] and "unknown field" in answers[5]["error"]
        big = raw(sock, b'{"cmd": "status", "pad": "' + b"x" * MAX_REQUEST_BYTES + b'"}\n{"cmd": "status"}\n')
        assert len(big) == 1 and not big[0]["ok"] and "longer than" in big[0]["error"]
        assert client.status()["frames"] == fed

        # a second service on the same socket is refused; this one carries on
        second = subprocess.run(cli("--input", "-", "--store", tmp_path / "other", "--model", model, "--control",
                                    sock), input=b"", capture_output=True, timeout=60)
        assert second.returncode == 1 and b"already listening on" in second.stderr
        assert client.status()["model_version"] == v1

        # a model that fails its card is refused and the running one stays
        (model / "head.npz").write_bytes(b"not a head")
        with pytest.raises(ControlError, match="SHA-256 does not match"):
            client.reload()
        v2 = make_model(model, b2=-31.0)
        assert v2 != v1
        # reload while frames stream in at 4x real time: none may be lost
        feeder = threading.Thread(target=feed, args=(sound((6, QUIET), seed=1), 0.02))
        feeder.start()
        time.sleep(0.5)
        assert client.reload() == v2
        feeder.join()
        assert client.status()["model_version"] == v2
        feed(sound((1, LOUD), (3, QUIET), seed=2))
        processed(fed)
    finally:
        out, err = proc.communicate(timeout=30)  # closes stdin: the end of the input
    assert proc.returncode == 0, err.decode()
    assert summary(out.decode()) == (fed, 2, 0)  # every frame fed was processed, across the swap
    assert [r.model_version for r in rows(store_dir, Kind.DETECTION)] == [v1, v2]
    assert b"refused a request from pid" in err and not sock.exists()


def test_sigterm_stops_a_realtime_run_cleanly(tmp_path):
    make_model(tmp_path / "model")
    audio = sound((20, QUIET))
    write_wav(tmp_path / "long.wav", audio)
    store_dir = tmp_path / "store"
    proc = subprocess.Popen(cli("--input", tmp_path / "long.wav", "--realtime", "--store", store_dir, "--model",
                                tmp_path / "model"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = ControlClient(store_dir / "control.sock")
    try:
        wait_for(lambda: client.status()["frames"] > 0, what="the service")
        time.sleep(1.0)
        st = client.status()
        assert "(real time)" in st["source"] and 10 <= st["frames"] <= st["uptime_s"] / 0.08 + 2
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    frames, _, _ = summary(out)
    assert st["frames"] <= frames < n_frames(audio)
    assert not (store_dir / "control.sock").exists()
    with Store(store_dir) as store:  # closed cleanly: opens, nothing half-written
        assert store.count() == 0 and list(store.clip_dir.iterdir()) == []


def test_labelling_in_another_process_while_the_service_writes(tmp_path):
    make_model(tmp_path / "model")
    bursts = 300
    audio = sound((1, QUIET), *[p for _ in range(bursts) for p in ((0.5, LOUD), (2.0, QUIET))], seed=5)
    write_wav(tmp_path / "busy.wav", audio)
    store_dir = tmp_path / "store"
    with Store(store_dir) as store:
        proc = subprocess.Popen(cli("--input", tmp_path / "busy.wav", "--store", store_dir, "--model",
                                    tmp_path / "model"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        labelled, rounds_while_running = set(), 0
        while True:
            running = proc.poll() is None
            todo = [r.id for r in store.review_queue(unlabelled_only=True, limit=20)]
            if todo:
                store.label(todo, Label.TRUE_ACCEPT)
                labelled.update(todo)
                rounds_while_running += running
            if not running and not todo:
                break
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "locked" not in err and "failed" not in err
        assert summary(out)[1] == bursts
        assert store.count() == bursts == len(labelled) and store.stats().true_accept == bursts
        assert rounds_while_running >= 5  # the two processes really did write at the same time


def test_client_without_a_service_names_the_socket_and_the_fix(tmp_path):
    path = tmp_path / "control.sock"
    with pytest.raises(ControlError, match=r"nothing listens on .*control\.sock: is `assistant run` running\?"):
        ControlClient(path).status()
    path.write_text("not a socket")
    with pytest.raises(ControlError, match="is not a socket"):
        ControlServer(path)
    assert path.read_text() == "not a socket"  # not ours to delete


def test_reload_swaps_in_a_warm_engine(tmp_path):
    """After a reload the new engine scores the very next frame: it was fed the ring's audio first."""
    model = tmp_path / "model"
    make_model(model)
    with Store(tmp_path / "store") as store:
        service = DeviceService(store, ServiceConfig(model))
        frames = sound((2, QUIET)).reshape(-1, FRAME_SAMPLES)
        first = [service.process(f) for f in frames]
        assert first[0].score is None  # a cold engine needs its windows filled
        make_model(model, b2=-31.0)
        service.reload()
        assert service.process(frames[0]).score is not None
        assert service.close().frames == len(frames) + 1


def test_default_store_dir_follows_xdg():
    assert default_store_dir({"XDG_DATA_HOME": "/data"}) == default_store_dir({"XDG_DATA_HOME": "/data/"})
    assert str(default_store_dir({"XDG_DATA_HOME": "/data"})) == "/data/assistant"
    home = default_store_dir({})
    assert home == default_store_dir({"XDG_DATA_HOME": "relative/ignored"}) and home.parts[-3:] == (
        ".local", "share", "assistant")


def test_the_service_applies_retention_at_start_up(tmp_path):
    make_model(tmp_path / "model")
    store_dir = tmp_path / "store"
    with Store(store_dir, clock=lambda: 1_000_000.0) as store:  # a detection saved long ago
        old = store.record_detection(np.full(1600, 500, np.int16), 0.9, "m0", None)
        kept = store.record_detection(np.full(1600, 500, np.int16), 0.9, "m0", None, time_s=time.time())
        old_clip = store.clip_path(store.get(old))
    assert old_clip.exists()
    write_wav(tmp_path / "quiet.wav", sound((2, QUIET)))
    out = subprocess.run(cli("--input", tmp_path / "quiet.wav", "--store", store_dir, "--model", tmp_path / "model"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not old_clip.exists()  # 30 days by default: the old clip is gone, the recent one stays
    with Store(store_dir) as store:
        assert store.get(old).clip is None and store.get(old).score == 0.9  # the row stays, without its clip
        assert store.clip_path(store.get(kept)).exists()

"""`assistant detect`: detections printed with times and scores, Hermes events on a local broker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
from test_kws import energy_backbone

from assistant.audio import write_wav
from assistant.kws.head import Head
from sda.mqtt.broker import EmbeddedBroker


def _models(tmp_path):
    energy_backbone(tmp_path / "b.onnx")
    head = Head(W1=np.full((12, 1), 1.0), b1=np.zeros(1), w2=np.array([2.0]), b2=np.array(-30.0), window=3, embed=4)
    head.save(tmp_path / "h.npz")
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(16000 * 2) * 30).astype(np.int16)
    loud = (rng.standard_normal(16000) * 12000).astype(np.int16)
    audio = np.concatenate([quiet, loud, quiet, loud, quiet])
    write_wav(tmp_path / "two.wav", audio)
    return audio


def run(tmp_path, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "assistant.cli", "detect", *args, "--backbone",
                           str(tmp_path / "b.onnx"), "--head", str(tmp_path / "h.npz")],
                          capture_output=True, timeout=120, input=stdin)


def test_detect_prints_each_detection_from_a_file_and_from_stdin(tmp_path):
    audio = _models(tmp_path)
    out = run(tmp_path, str(tmp_path / "two.wav"), "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert len(events) == 2 and 2.0 < events[0]["time_s"] < 3.0 and 5.0 < events[1]["time_s"] < 6.0
    piped = run(tmp_path, "-", "--json", stdin=audio.tobytes())
    assert [json.loads(x)["time_s"] for x in piped.stdout.decode().splitlines()] == [e["time_s"] for e in events]
    human = run(tmp_path, str(tmp_path / "two.wav"))
    assert "score" in human.stdout.decode() and "2 detections" in human.stderr.decode()


def test_detect_refuses_bad_audio_with_a_clear_message(tmp_path):
    _models(tmp_path)
    (tmp_path / "bad.wav").write_bytes(b"RIFF junk")
    out = run(tmp_path, str(tmp_path / "bad.wav"))
    assert out.returncode == 1 and b"not a readable WAV" in out.stderr


def test_detections_are_published_as_hermes_events(tmp_path):
    import paho.mqtt.client as mqtt

    _models(tmp_path)
    got, done = [], threading.Event()
    with EmbeddedBroker() as broker:
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="listener", protocol=mqtt.MQTTv311)

        def on_message(c, ud, msg):
            got.append((msg.topic, json.loads(msg.payload)))
            if len(got) == 2:
                done.set()

        sub.on_message = on_message
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("hermes/hotword/+/detected", qos=1)
        sub.loop_start()
        try:
            out = run(tmp_path, str(tmp_path / "two.wav"), "--hermes", broker.url, "--wakeword-id", "hey_snips")
            assert out.returncode == 0, out.stderr
            assert done.wait(10)
        finally:
            sub.loop_stop()
            sub.disconnect()
    assert [t for t, _ in got] == ["hermes/hotword/hey_snips/detected"] * 2
    assert got[0][1]["modelId"] == "hey_snips" and 2000 < got[0][1]["detectionSignalMs"] < 3000

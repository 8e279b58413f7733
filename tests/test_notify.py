"""systemd's notify protocol: READY once the model and the broker are up, WATCHDOG pings from the audio loop,
STOPPING at the end, all read off a real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from assistant.notify import Notifier, socket_address, watchdog_interval_s

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "tests" / "data" / "kws" / "positive_hey_snips_en-us_female2.wav"


@pytest.fixture
def notify_socket(tmp_path):
    """A datagram socket like systemd's, read as messages arrive: (its path, a function returning the messages
    received so far; its `.times` says when each arrived)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    got: list[str] = []
    times: list[float] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            times.append(time.monotonic())
            got.append(data.decode())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def messages() -> list[str]:
        time.sleep(0.2)  # the last datagrams in flight
        return list(got)

    messages.times = times  # type: ignore[attr-defined]
    yield path, messages
    done.set()
    reader.join()
    sock.close()


def test_watchdog_interval_is_half_of_systemds_and_only_for_the_named_process():
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, 42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval_s({}, 42) is None


def test_socket_addresses():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract") == b"\0abstract"
    assert socket_address("") is None and socket_address("vsock:2:1") is None


def test_pings_are_rate_limited_and_messages_arrive(notify_socket):
    path, messages = notify_socket
    now = [100.0]
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}, pid=1, clock=lambda: now[0])
    assert n.enabled and n.watchdog_s == 0.5
    n.ready("listening")
    for _ in range(10):  # ten frames within one interval: one ping
        n.ping()
        now[0] += 0.04
    now[0] += 0.2
    n.ping()  # past the interval: the second
    n.stopping()
    n.close()
    assert messages() == ["READY=1\nSTATUS=listening", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"]


def test_outside_systemd_nothing_is_sent():
    n = Notifier({})
    assert not n.enabled and n.watchdog_s is None
    n.ready("x")
    n.ping()
    assert n.send("READY=1") is False


def test_an_abstract_socket(tmp_path):
    name = f"assistant-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert sock.recv(100) == b"READY=1\nSTATUS=up"
    finally:
        sock.close()


def _run(tmp_path, notify_path, *extra, realtime=True):
    config = tmp_path / "assistant.yaml"
    config.write_text(f"audio: {{input: {CLIP}, realtime: {'true' if realtime else 'false'}}}\n"
                      f"store: {{dir: {tmp_path / 'store'}}}\nmodel: {{verifier: false}}\n")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
    return subprocess.run([sys.executable, "-m", "assistant.cli", "run", "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def test_the_service_says_ready_then_pings_from_the_audio_loop_then_stopping(tmp_path, notify_socket, mosquitto):
    """The clip is played at real time (~3 s): the loop pings every 0.1 s (half of WATCHDOG_USEC) while it runs.
    With a local Hermes broker configured, READY waits for it."""
    path, messages = notify_socket
    hermes = f"mqtt://dev1:{mosquitto.passwords['dev1']}@127.0.0.1:{mosquitto.port}"
    r = _run(tmp_path, path, "--hermes", hermes)
    assert r.returncode == 0, r.stderr
    got = messages()
    assert got[0].startswith("READY=1\nSTATUS=listening for hey_snips (model ")
    pings = got[1:-1]
    assert pings and set(pings) == {"WATCHDOG=1"}
    assert len(pings) >= 5  # 3 s of audio at real time, a ping every 0.1 s at most
    gaps = [b - a for a, b in zip(messages.times[1:-2], messages.times[2:-1], strict=True)]
    assert min(gaps) >= 0.05, gaps  # rate-limited, not one per 80 ms frame (some jitter in the receiving)
    assert got[-1] == "STOPPING=1\nSTATUS=stopping"


def test_no_ready_when_the_broker_is_not_up(tmp_path, notify_socket, mosquitto):
    """A local broker that refuses the login: the service never says READY (systemd would time the start out and
    restart it), and says why in its status."""
    path, messages = notify_socket
    r = _run(tmp_path, path, "--hermes", f"mqtt://dev1:wrong@127.0.0.1:{mosquitto.port}", realtime=False)
    assert r.returncode == 1 and "cannot reach the local broker" in r.stderr
    got = messages()
    assert not any(m.startswith("READY=1") for m in got) and not any("WATCHDOG" in m for m in got)
    assert got and got[-1].startswith("STATUS=failed: cannot reach the local broker")

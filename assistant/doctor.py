"""`assistant doctor`: check what the device service needs, one finding per check, each failure with its fix.

The checks read and probe, and never change anything: no file is created, no key generated, and the broker
login uses its own client id with a session that expires at once (a device's own id would take over the
running service's connection).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import Config, store_dir
from .errors import AssistantError

MIN_FREE_BYTES = 200 * 1024 * 1024  # a day of clips is a few MB; below this, retention and SQLite's WAL suffer
KEY_BYTES = 64  # sda.crypto.Identity: Ed25519 seed then X25519 scalar
#: A clock before this is unset (a Pi has no real-time clock: it starts at the last shutdown, or at 1970).
EARLIEST_PLAUSIBLE = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, 0))


@dataclass(frozen=True)
class Finding:
    """One check's outcome: status "ok", "warn" (works, but look) or "fail" (the service will not work)."""

    check: str
    status: str
    detail: str
    fix: str = ""

    def render(self) -> str:
        """One line, and the fix on the next when there is one."""
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[self.status]
        return f"{mark}  {self.check:<8} {self.detail}" + (f"\n      fix: {self.fix}" if self.fix else "")


def check_audio(cfg: Config) -> Finding:
    """The input the service will read: the file of audio.input, else a PortAudio capture device at 16 kHz mono."""
    if cfg.audio.input is not None:
        if str(cfg.audio.input) == "-":
            return Finding("audio", "ok", "raw PCM on stdin (audio.input: -)")
        from .audio import read_audio

        try:
            samples = read_audio(cfg.audio.input)
        except AssistantError as exc:
            return Finding("audio", "fail", str(exc), "give audio.input a 16 kHz mono WAV or FLAC file")
        return Finding("audio", "ok", f"file {cfg.audio.input}: {len(samples) / 16000:.1f} s at 16 kHz")
    try:
        import sounddevice
    except OSError:
        return Finding("audio", "fail", "PortAudio is missing", "sudo apt-get install libportaudio2")
    device = int(cfg.audio.device) if cfg.audio.device and cfg.audio.device.isdigit() else cfg.audio.device
    try:
        inputs = [d for d in sounddevice.query_devices() if d["max_input_channels"] > 0]
        if not inputs:
            raise ValueError("no capture device")
        sounddevice.check_input_settings(device=device, samplerate=16000, channels=1, dtype="int16")
        name = sounddevice.query_devices(device, "input")["name"]
    except (sounddevice.PortAudioError, ValueError) as exc:
        snd = Path("/dev/snd")
        hint = ("plug in a USB microphone (list capture devices with `arecord -l`), or set audio.device"
                " (names and numbers: `python -m sounddevice`)")
        if snd.is_dir() and not os.access(snd, os.R_OK | os.X_OK):
            hint = "the user cannot open /dev/snd: add it to the audio group (`sudo usermod -aG audio USER`)"
        return Finding("audio", "fail", f"no usable microphone ({exc})", hint)
    return Finding("audio", "ok", f"microphone {name!r} takes 16 kHz mono")


def check_model(cfg: Config) -> Finding:
    """The model the service will load (a release installed in the store first), checked against its card."""
    from .kws.model import default_model_dir, load_model
    from .learning.device import model_versions_dir

    installed = model_versions_dir(store_dir(cfg)) / "current"
    directory = cfg.model.dir or (installed if installed.is_dir() else default_model_dir())
    try:
        files = load_model(directory)
    except AssistantError as exc:
        fix = ("run systemd/install.sh again (it copies the shipped models), or point model.dir at a model"
               " directory" if cfg.model.dir is None else "point model.dir at a directory with backbone.onnx,"
               " head.npz and card.json")
        return Finding("model", "fail", str(exc), fix)
    return Finding("model", "ok", f"{files.wakeword} {files.version} in {directory}: every file matches its"
                   " card's SHA-256")


def check_disk(cfg: Config) -> Finding:
    """The store's folder (or its nearest existing parent): writable, and with room for clips."""
    root = store_dir(cfg)
    probe = root
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if not os.access(probe, os.W_OK):
        return Finding("disk", "fail", f"{probe} is not writable by this user",
                       "run as the service's user (`sudo -u assistant assistant doctor`), or fix the folder's owner")
    detail = f"store {root}{'' if root.exists() else ' (created on first start)'}: {free / 2**30:.1f} GiB free"
    if free < MIN_FREE_BYTES:
        return Finding("disk", "fail", detail, "free some space, or keep fewer clips (`assistant tui`, settings:"
                       " retention; then `assistant data retention`)")
    return Finding("disk", "ok", detail)


def check_keys(cfg: Config) -> list[Finding]:
    """The device's identity key and, with learning configured, the credentials file: size and permissions."""
    from .learning.device import default_device_key

    out = []
    key = cfg.learning.device_key or default_device_key(store_dir(cfg))
    if not key.exists():
        out.append(Finding("keys", "ok" if not cfg.learning.enabled else "warn", f"{key} does not exist yet: it is"
                           " created (mode 0600) when the device first takes part"))
    else:
        out.append(_secret_file(key, "device key", size=KEY_BYTES))
    if cfg.learning.credentials is not None:
        out.append(_secret_file(cfg.learning.credentials, "credentials"))
    return out


def _secret_file(path: Path, what: str, size: int | None = None) -> Finding:
    """A file only its owner may read: the device key (mode 0600). The credentials may also be readable by their
    group (root:assistant 0640, as the installer's README puts them), never by others."""
    try:
        st = path.stat()
        with path.open("rb"):
            pass
    except OSError as exc:
        return Finding("keys", "fail", f"{what} {path}: {exc.strerror or exc}",
                       "run as the service's user (sudo -u assistant ...), or restore the file (`sda admin"
                       " add-device` makes credentials)")
    if size is not None and st.st_size != size:
        return Finding("keys", "fail", f"{what} {path} is {st.st_size} bytes, not {size}: not a device key",
                       "move it away; a new one is made on the next start (the device then has a new identity)")
    mode = stat.S_IMODE(st.st_mode)
    too_open = stat.S_IRWXO | (stat.S_IRWXG if size is not None else stat.S_IWGRP | stat.S_IXGRP)
    if mode & too_open:
        allowed = "600" if size is not None else "640"
        return Finding("keys", "fail", f"{what} {path} has mode {mode:04o}: others can read or change it",
                       f"chmod {allowed} {path}")
    if size is not None and st.st_uid != os.getuid():
        return Finding("keys", "warn", f"{what} {path} belongs to uid {st.st_uid}, not this user ({os.getuid()})",
                       f"run as the service's user, or chown it to that user (sudo chown assistant: {path})")
    return Finding("keys", "ok", f"{what} {path}: mode {mode:04o}, {st.st_size} bytes")


def check_clock(now: float | None = None, ntp: Callable[[], str | None] | None = None) -> Finding:
    """The wall clock: set (rounds, releases and signatures carry times) and, where timedatectl says, synchronised."""
    now = time.time() if now is None else now
    if now < EARLIEST_PLAUSIBLE:
        return Finding("clock", "fail", f"the clock says {time.strftime('%Y-%m-%d', time.gmtime(now))}: it is not set",
                       "connect the Pi to a network with NTP (`timedatectl set-ntp true`), or set it by hand")
    synced = (ntp or _ntp_synchronised)()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))
    if synced == "no":
        return Finding("clock", "warn", f"{stamp}, not synchronised by NTP",
                       "`timedatectl set-ntp true` (a Pi has no battery clock: it drifts while off)")
    return Finding("clock", "ok", stamp + (", NTP synchronised" if synced == "yes" else ""))


def _ntp_synchronised() -> str | None:
    try:
        r = subprocess.run(["timedatectl", "show", "--property=NTPSynchronized", "--value"], capture_output=True,
                           text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() in ("yes", "no") else None


def check_broker(cfg: Config, timeout_s: float = 5.0) -> list[Finding]:
    """With learning configured: the broker reachable over TCP, its TLS certificate valid, and the login accepted."""
    if not cfg.learning.enabled:
        return [Finding("broker", "ok", "learning not configured (learning.credentials): nothing to reach")]
    from sda.errors import SdaError
    from sda.mqtt.transport import BrokerConfig, Transport

    from .learning.device import LearningConfig, default_device_key

    fl = cfg.learning
    try:
        if fl.credentials is not None:
            lc = LearningConfig.from_credentials(fl.credentials, default_device_key(store_dir(cfg)), "doctor",
                                                 fl.broker)
        else:
            lc = LearningConfig.from_url(fl.broker or "", fl.coordinator_key or "", default_device_key(store_dir(cfg)),
                                         "doctor", fl.device_id, fl.coordinator_id)
    except AssistantError as exc:
        return [Finding("broker", "fail", str(exc), "fix learning.* in the configuration (`assistant config check`)")]
    b: BrokerConfig = lc.broker
    where = f"{b.host}:{b.port}"
    try:
        with socket.create_connection((b.host, b.port), timeout=timeout_s) as sock:
            if b.tls_ca:
                context = ssl.create_default_context(cafile=None if b.tls_ca == "system" else b.tls_ca)
                with context.wrap_socket(sock, server_hostname=b.host) as tls:
                    tls_detail = f", TLS {tls.version()} certificate valid for {b.host}"
            else:
                tls_detail = ", no TLS"
    except ssl.SSLCertVerificationError as exc:
        return [Finding("broker", "fail", f"{where}: the broker's certificate is not trusted ({exc.verify_message})",
                        "give the CA that signed it (tls_ca in the credentials), or fix the broker's certificate")]
    except (ssl.SSLError, OSError) as exc:
        tls = " with TLS" if b.tls_ca else ""
        return [Finding("broker", "fail", f"cannot reach {where}{tls}: {exc}",
                        "check the broker's address and port, the network, and that Mosquitto runs there")]
    found = [Finding("broker", "ok", f"{where} reachable{tls_detail}")]
    probe = dataclasses.replace(b, session_expiry_s=0)
    client_id = f"{lc.device_id}-doctor-{os.urandom(3).hex()}"
    t = Transport(client_id, probe, lambda *_: None)
    try:
        t.start(timeout_s)
        found.append(Finding("broker", "ok", f"logged in as {b.username or '(anonymous)'} with MQTT"
                             f" {'5' if t.protocol_version == 5 else '3.1.1'}"))
    except SdaError as exc:
        found.append(Finding("broker", "fail", f"login as {b.username or '(anonymous)'} refused: {exc}",
                             "check the user and password (ask the developer for new credentials: `sda admin"
                             " add-device NAME`)"))
    finally:
        t.stop()
    return found


def run_checks(cfg: Config, timeout_s: float = 5.0) -> list[Finding]:
    """Every check, in the order the service meets them."""
    return [check_audio(cfg), check_model(cfg), check_disk(cfg), *check_keys(cfg), check_clock(),
            *check_broker(cfg, timeout_s)]

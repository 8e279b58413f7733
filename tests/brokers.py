"""A real Mosquitto broker for the tests, provisioned by `sda.mqtt.mosquitto`.

Imported by the tests as `from brokers import MosquittoBroker` (pytest's default import mode puts
tests/, which has no __init__.py, on sys.path). The session fixture `mosquitto` in conftest.py
starts one; a test that needs a differently configured broker makes its own with `with
MosquittoBroker(...) as b:`.

When we run as root (the Makefile's `make test` in a container), Mosquitto drops privileges to the
`mosquitto` user before reading the password and ACL files and writing its persistence file, so
the temporary directory and its files are given to that user, exactly as on the server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from sda.mqtt import mosquitto as provision

MOSQUITTO = "/usr/sbin/mosquitto"
DEFAULT_USERS = ("coordinator", "dev1", "dev2", "clerk1", "clerk2")
HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _PortTaken(Exception):
    """Mosquitto could not bind its port."""


def _broker_user() -> str | None:
    """The user Mosquitto will run as when started by root, or None if we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return "root"  # no `mosquitto` user: tell the broker to stay root (`user root`)
    return "mosquitto"


class MosquittoBroker:
    """A Mosquitto process on 127.0.0.1 with password file, sda ACL and persistence in a temp dir.

    Attributes: host, port, passwords (user -> password), conf (path of mosquitto.conf), workdir,
    passwd_file, acl_file, log_file.
    """

    def __init__(
        self,
        users: tuple[str, ...] = DEFAULT_USERS,
        *,
        max_packet_bytes: int | None = None,
        extra_lines: tuple[str, ...] = (),
        tls: dict | None = None,
        use_username_as_clientid: bool = False,
        executable: str = MOSQUITTO,
    ) -> None:
        if not os.access(executable, os.X_OK):
            raise FileNotFoundError(
                f"{executable} is missing: run `make test` as root, or `apt-get install mosquitto`"
            )
        self.executable = executable
        self.host = HOST
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="sda-mosquitto-"))
        self.passwd_file = self.workdir / "passwd"
        self.acl_file = self.workdir / "sda.acl"
        self.conf = self.workdir / "mosquitto.conf"
        self.log_file = self.workdir / "mosquitto.log"
        self.passwords: dict[str, str] = {}
        self._proc: subprocess.Popen | None = None
        self._log = None
        run_as = _broker_user()
        self._owner = "mosquitto" if run_as == "mosquitto" else None
        if self._owner:
            shutil.chown(self.workdir, self._owner, self._owner)
        for name in users:
            password = provision.generate_password()
            provision.add_user(self.passwd_file, name, password, owner=self._owner)
            self.passwords[name] = password
        provision.write_acl(self.acl_file, "coordinator", owner=self._owner)
        if tls is not None:
            tls = self._copy_tls_files(tls)
        self._config = dict(
            passwd_file=self.passwd_file,
            acl_file=self.acl_file,
            persistence_dir=self.workdir,
            max_packet_bytes=max_packet_bytes,
            tls=tls,
            use_username_as_clientid=use_username_as_clientid,
            extra_lines=(*extra_lines, *(["user root"] if run_as == "root" else [])),
        )
        self._started_once = False
        self._write_config()

    def _write_config(self) -> None:
        provision.write_config(self.conf, port=self.port, **self._config)

    def _copy_tls_files(self, tls: dict) -> dict:
        """Copy the certificate and key into the work dir: Mosquitto 2.0 reads them after dropping
        privileges, so a file under a root-only directory (pytest's tmp_path) would be unreadable."""
        tls = dict(tls)
        tls_dir = self.workdir / "tls"
        tls_dir.mkdir(mode=0o700)
        for key in ("cafile", "certfile", "keyfile"):
            if key in tls:
                dest = tls_dir / f"{key}.pem"
                shutil.copyfile(tls[key], dest)
                os.chmod(dest, 0o600)
                if self._owner:
                    shutil.chown(dest, self._owner, self._owner)
                tls[key] = dest
        if self._owner:
            shutil.chown(tls_dir, self._owner, self._owner)
        return tls

    # -- process -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Start `mosquitto -c conf` and wait until its port accepts connections.

        On the very first start, a port taken in the meantime (another test's broker) is replaced
        by a fresh one; `restart` keeps the port.
        """
        for _attempt in range(3):
            try:
                return self._start(timeout)
            except _PortTaken:
                if self._started_once:
                    raise RuntimeError(f"port {self.port} was taken while mosquitto was down") from None
                self.port = free_port()
                self._write_config()
        raise RuntimeError("could not find a free port for mosquitto in 3 attempts")

    def _start(self, timeout: float) -> MosquittoBroker:
        if self.pid is not None:
            return self
        self._log = open(self.log_file, "ab")  # noqa: SIM115  (kept open for the process' lifetime)
        self._proc = subprocess.Popen(
            [self.executable, "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                if "Address already in use" in self.log_tail(5):
                    self.stop()
                    raise _PortTaken
                raise RuntimeError(
                    f"mosquitto exited with status {self._proc.returncode} on start:\n{self.log_tail()}"
                )
            # Ready when an MQTT CONNECT gets a CONNACK (anonymous: refused, which proves it is
            # our broker answering, not some other listener that took the port).
            with contextlib.suppress(OSError, TimeoutError):
                self.connack(None, None, timeout=0.5)
                self._started_once = True
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Mosquitto saves its persistence file), wait; SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again: same port, same persistence (retained messages, sessions)."""
        self.stop()
        self.start(timeout)

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its configuration, password file and ACL file."""
        if self.pid is None:
            raise RuntimeError("mosquitto is not running")
        os.kill(self.pid, signal.SIGHUP)

    def cleanup(self) -> None:
        """Stop the broker and delete its directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- users ---------------------------------------------------------------------------------

    def add_user(self, name: str, password: str | None = None, timeout: float = 5.0) -> str:
        """Add a user to the password file, SIGHUP the broker, wait until it accepts the user."""
        password = password or provision.generate_password()
        provision.add_user(self.passwd_file, name, password, owner=self._owner)
        self.passwords[name] = password
        if self.pid is not None:
            self.reload()
            self._wait_for(lambda: self.connack(name, password) == 0, timeout, f"{name} to be accepted")
        return password

    def remove_user(self, name: str, timeout: float = 5.0) -> None:
        """Remove a user from the password file, SIGHUP the broker, wait until it refuses the user."""
        password = self.passwords.pop(name)
        provision.remove_user(self.passwd_file, name)
        if self.pid is not None:
            self.reload()
            self._wait_for(lambda: self.connack(name, password) != 0, timeout, f"{name} to be refused")

    def _wait_for(self, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what} after SIGHUP:\n{self.log_tail()}")
            time.sleep(0.05)

    def connack(
        self,
        username: str | None,
        password: str | None,
        *,
        client_id: str | None = None,
        protocol: int = mqtt.MQTTv5,
        timeout: float = 5.0,
    ) -> int:
        """Connect once, return the CONNACK reason code's value (0: accepted), disconnect."""
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{secrets.token_hex(6)}",
            protocol=protocol,
        )
        if username is not None:
            client.username_pw_set(username, password)
        result: list[int] = []
        client.on_connect = lambda _c, _u, _f, rc, _p: result.append(rc.value)
        client.connect(self.host, self.port, keepalive=10)
        deadline = time.monotonic() + timeout
        try:
            while not result:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no CONNACK from mosquitto on port {self.port} within {timeout} s")
                client.loop(0.05)
            if result[0] == 0:
                client.disconnect()
        finally:
            sock = client.socket()
            if sock is not None:
                sock.close()
        return result[0]

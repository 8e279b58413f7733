"""systemd's notify protocol (sd_notify(3)), spoken directly: one datagram per message to $NOTIFY_SOCKET.

The service says READY=1 once its model is loaded and it listens (a local Hermes broker connected; the learning
broker may come later, see learning.device.StartWhenReachable), STATUS= lines that
`systemctl status` shows, and WATCHDOG=1 from the audio loop itself: if the microphone stalls or the loop
hangs, the pings stop and systemd restarts the service (WatchdogSec= in the unit). Outside systemd (no
$NOTIFY_SOCKET) every call does nothing.

No libsystemd binding: the protocol is a few bytes on an AF_UNIX datagram socket, and python-systemd would
need a C build on the Pi.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("assistant.notify")


def watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """How often to ping: half of $WATCHDOG_USEC (as sd_watchdog_enabled(3) advises), or None when systemd
    asks for no pings, or asks another process ($WATCHDOG_PID)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2e6


def socket_address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as an address for socket.sendto: a path, or an abstract name ("@name"), else None."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock (vsock:CID:PORT) and anything else: not ours to speak


class Notifier:
    """Sends notify messages when run under systemd; a no-op otherwise. Thread-safe (one sendto per message)."""

    def __init__(self, env: Mapping[str, str] = os.environ, pid: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self._interval = watchdog_interval_s(env, os.getpid() if pid is None else pid)
        self._clock = clock
        self._next_ping = 0.0
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)  # never let a stuck manager stall the audio loop

    @property
    def enabled(self) -> bool:
        """Whether there is a systemd to tell."""
        return self._sock is not None

    @property
    def watchdog_s(self) -> float | None:
        """The ping interval, None when no watchdog is asked for."""
        return self._interval

    def send(self, *lines: str) -> bool:
        """One message of `lines` ("READY=1", "STATUS=..."); False when it could not be sent (logged once)."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)  # type: ignore[arg-type]
            return True
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self._address, exc)
            return False

    def ready(self, status: str) -> None:
        """The service is up: systemd finishes `systemctl start` and starts the watchdog clock."""
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """A line for `systemctl status`."""
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        """The service is shutting down on purpose."""
        self.send("STOPPING=1", "STATUS=stopping")

    def ping(self) -> None:
        """From the loop that must stay alive: WATCHDOG=1 at most once per interval (cheap to call per frame)."""
        if self._interval is None or self._sock is None:
            return
        now = self._clock()
        if now >= self._next_ping:
            self._next_ping = now + self._interval
            self.send("WATCHDOG=1")

    def close(self) -> None:
        """Release the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

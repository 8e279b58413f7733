"""The local control channel between `assistant run` and `assistant tui`: one JSON object per line over a
Unix domain socket that only the service's user can open (mode 0600), one response per request.

    {"cmd": "status"}                 -> {"ok": true, "model_version", "wakeword", "threshold", "uptime_s",
                                          "frames", "detections", "near_misses", "source"}
    {"cmd": "capture", "seconds": N}  -> {"ok": true, "id": ROW}   the last N s of the ring as "you missed me"
    {"cmd": "reload"}                 -> {"ok": true, "model_version": V}   the model again from disk, hot-swapped
    anything else                     -> {"ok": false, "error": "what was wrong"}

A request line is at most MAX_REQUEST_BYTES (newline included). `answer` is the protocol: bytes in, a
response out, no I/O. `ControlServer` serves it from background threads; `ControlClient` is what the TUI
calls. Local by construction: a filesystem socket, never TCP, so nothing on the network can reach it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import socketserver
import stat
import struct
import threading
from pathlib import Path
from typing import Protocol

from .errors import AssistantError, ControlError

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096
MAX_RESPONSE_BYTES = 64 * 1024
IDLE_TIMEOUT_S = 60.0  # a connection that sends nothing for this long is closed (its thread ends)
SLOW_TIMEOUT_S = 30.0  # capture writes and fsyncs a clip, reload loads a model: longer than a status read
SOCKET_NAME = "control.sock"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes on Linux, NUL included

#: Each command and the fields its request may carry besides "cmd".
COMMANDS: dict[str, frozenset[str]] = {
    "status": frozenset(), "capture": frozenset({"seconds"}), "reload": frozenset()}


def default_control_path(store_dir: Path) -> Path:
    """Where `assistant run` listens unless told otherwise: beside the store it writes."""
    return Path(store_dir) / SOCKET_NAME


class ControlTarget(Protocol):
    """What the channel controls (the device service)."""

    def status(self) -> dict: ...

    def capture(self, seconds: float) -> int: ...

    def reload(self) -> str: ...


def _error(message: str) -> dict:
    return {"ok": False, "error": message}


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def answer(line: bytes, target: ControlTarget) -> dict:
    """The response to one request line. Never raises: a bad request, a refused command and even a bug in a
    command become {"ok": false, "error": ...}."""
    if len(line) > MAX_REQUEST_BYTES:
        return _error(f"request longer than {MAX_REQUEST_BYTES} bytes")
    try:
        request = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; deep nesting recurses
        return _error(f"not JSON: send one object per line, like {{\"cmd\": \"status\"}} ({type(exc).__name__})")
    if not isinstance(request, dict):
        return _error(f"expected a JSON object like {{\"cmd\": \"status\"}}, got a {type(request).__name__}")
    cmd = request.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        return _error(f"unknown command {_short(cmd)}; known: {', '.join(COMMANDS)}")
    if extra := sorted(set(request) - {"cmd"} - COMMANDS[cmd]):
        return _error(f"{cmd}: unknown field(s) {_short(extra)}; allowed: {sorted(COMMANDS[cmd]) or 'none'}")
    try:
        if cmd == "status":
            return {"ok": True, **target.status()}
        if cmd == "capture":
            seconds = request.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
                return _error(f"capture needs \"seconds\": a number of seconds, got {_short(seconds)}")
            return {"ok": True, "id": target.capture(float(seconds))}
        return {"ok": True, "model_version": target.reload()}
    except AssistantError as exc:
        return _error(str(exc))
    except Exception as exc:  # a bug in one command must not take the service down with it
        log.exception("control: %s failed", cmd)
        return _error(f"internal error in {cmd}: {exc!r}")


def _peer(conn: socket.socket) -> str:
    """Who is on the other end of a Unix socket (Linux SO_PEERCRED), for the log."""
    try:
        pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError):
        return "an unknown peer"
    return f"pid {pid} (uid {uid})"


class _Handler(socketserver.StreamRequestHandler):
    timeout = IDLE_TIMEOUT_S
    server: _Server

    def handle(self) -> None:
        peer = _peer(self.connection)
        while True:
            try:
                line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
            except OSError:  # idle timeout or a reset: nothing to answer
                return
            if not line:
                return
            response = answer(line, self.server.target)
            if not response["ok"]:
                log.warning("control: refused a request from %s: %s", peer, response["error"])
            try:
                self.wfile.write(json.dumps(response).encode() + b"\n")
            except OSError:
                return
            if len(line) > MAX_REQUEST_BYTES:  # the rest of that line is unread: close rather than guess
                return


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    target: ControlTarget


def _claim(path: Path) -> None:
    """Make `path` free to bind: remove a socket a dead service left behind; refuse a live one, or a file
    that is not a socket (not ours to delete)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket: move it away or pass another --control path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:  # nobody listens: a service that died without cleaning up
        path.unlink(missing_ok=True)
        log.info("control: replaced the stale socket %s", path)
        return
    except OSError as exc:
        raise ControlError(f"cannot check the control socket {path} ({exc}): remove it if no service runs") from exc
    finally:
        probe.close()
    raise ControlError(f"another `assistant run` is already listening on {path}: stop it first"
                       " (or give this one another --store or --control path)")


class ControlServer:
    """Listens on `path` from construction (so a second service is refused before it touches anything);
    `start(target)` serves requests in background threads; `close()` stops and removes the socket."""

    def __init__(self, path: Path):
        self.path = Path(path).absolute()
        if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
            raise ControlError(f"control socket path {self.path} is longer than {_SUN_PATH_MAX} bytes (a Unix"
                               " socket limit): pass a shorter --control path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _claim(self.path)
        self._server = _Server(str(self.path), _Handler, bind_and_activate=False)
        try:
            # The umask makes the socket 0600 from its first instant, not after a chmod; it is process-wide,
            # so this runs at start-up, before the service's other threads exist.
            old = os.umask(0o177)
            try:
                self._server.server_bind()
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            self._server.server_activate()
            self._inode = os.stat(self.path).st_ino
        except OSError as exc:
            self._server.server_close()
            raise ControlError(f"cannot listen on {self.path} ({exc})") from exc
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self, target: ControlTarget) -> None:
        """Answer requests for `target` until `close()`."""
        self._server.target = target
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop answering and remove the socket file (only if it is still ours). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ControlClient:
    """Talks to a running `assistant run` over its control socket; one connection per request, so a restarted
    service is picked up by the next call. ControlError names the socket and the fix.

    `timeout_s` bounds connecting and a status read; capture and reload may take up to SLOW_TIMEOUT_S."""

    def __init__(self, path: Path, timeout_s: float = 2.0):
        self.path = Path(path)
        self.timeout_s = timeout_s

    def status(self) -> dict:
        """The service's state: model_version, wakeword, threshold, uptime_s, frames, detections,
        near_misses (saved by the store), source."""
        response = self.request({"cmd": "status"})
        response.pop("ok")
        return response

    def capture(self, seconds: float) -> int:
        """Save the last `seconds` of audio as a "you missed me" row; its id."""
        return int(self.request({"cmd": "capture", "seconds": seconds}, SLOW_TIMEOUT_S)["id"])

    def reload(self) -> str:
        """Make the service load its model again from disk; the new model version."""
        return str(self.request({"cmd": "reload"}, SLOW_TIMEOUT_S)["model_version"])

    def request(self, request: dict, timeout_s: float | None = None) -> dict:
        """Send one request and return the response; ControlError when nobody answers or the service refuses."""
        cmd = request.get("cmd", "request")
        wait_s = max(self.timeout_s, timeout_s or 0.0)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise ControlError(f"nothing listens on {self.path}: is `assistant run` running? Start it (or"
                                   " point to the socket it uses with --control)") from None
            except PermissionError:
                raise ControlError(f"{self.path}: permission denied: the service runs as another user; run"
                                   " this as the same user as `assistant run`") from None
            sock.settimeout(wait_s)
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as f:
                line = f.readline(MAX_RESPONSE_BYTES)
        except TimeoutError:
            raise ControlError(f"{self.path}: no answer to {cmd} within {wait_s:g} s (the service is stuck or"
                               " overloaded)") from None
        except OSError as exc:
            raise ControlError(f"{self.path}: connection lost during {cmd} ({exc}): did `assistant run`"
                               " stop?") from exc
        finally:
            sock.close()
        if not line:
            raise ControlError(f"{self.path}: the service closed the connection without answering {cmd}")
        try:
            response = json.loads(line)
        except ValueError:
            response = None
        if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
            raise ControlError(f"{self.path}: not a control-channel answer: {line[:80]!r}")
        if not response["ok"]:
            raise ControlError(f"{cmd} refused by the service on {self.path}: {response.get('error')}")
        return response

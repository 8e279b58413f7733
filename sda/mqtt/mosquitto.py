"""Provisioning of a Mosquitto 2.x broker: password file, ACL file, configuration.

Used by `sda admin add-device NAME` on the developer's server and by the test broker
(tests/brokers.py). Authentication is by password file (`mosquitto_passwd`), authorisation by the
ACL of `topics.acl_lines`, which matches the authenticated username `%u`, never the client id `%c`.

Two facts of Mosquitto 2.0 (Debian bookworm ships 2.0.11) shape this module:

* Started as root, the broker drops privileges to the `mosquitto` user *before* it reads the
  password and ACL files, on start and on every SIGHUP reload. A file left `root:root 0600` stops
  it ("Unable to open pwfile"): pass `owner="mosquitto"` (or `chown mosquitto:mosquitto` it).
  Later 2.0.x releases also warn that world-readable files will be refused, so both are 0600 here.
* `mosquitto_passwd -b` puts the password on the command line, where every local user can read it
  in /proc while it runs; we feed it on standard input instead (same tool, same file format).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sda.errors import TransportError
from sda.mqtt import topics

__all__ = [
    "acl_text",
    "add_user",
    "check_username",
    "generate_password",
    "list_users",
    "remove_user",
    "write_acl",
    "write_config",
]

_INSTALL_HINT = "install it with `apt-get install mosquitto` (Debian, Raspberry Pi OS)"
_MAX_PASSWORD = 256
_MAX_PACKET = 268_435_460  # MQTT's largest packet: 268,435,455 bytes of remaining length + header
_PASSWD_FALLBACKS = ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd")  # when not on PATH
_TLS_KEYS = {"port", "bind", "cafile", "certfile", "keyfile", "require_certificate", "tls_version"}


def check_username(username: str) -> str:
    """`username` if it is a valid party id (the topics' id rule), else ValueError.

    The same rule as a topic level, so `%u` in an ACL pattern can never expand to `+`, `#` or `/`,
    and the name can never break a password file line (`:`) or be empty.
    """
    if not isinstance(username, str) or not topics._ID_RE.fullmatch(username):
        raise ValueError(
            f"not a valid broker username: {username!r:.80} (expected [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}})"
        )
    return username


def generate_password() -> str:
    """A fresh random password: 24 random bytes, URL-safe base64 (32 characters)."""
    return secrets.token_urlsafe(24)


def _check_password(password: str) -> None:
    if not isinstance(password, str) or not password:
        raise ValueError("a broker password must be a non-empty string")
    if len(password) > _MAX_PASSWORD:
        raise ValueError(f"a broker password must be at most {_MAX_PASSWORD} characters, not {len(password)}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise ValueError("a broker password must not contain control characters (newline, NUL, ...)")


def _passwd_tool() -> str:
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    for candidate in _PASSWD_FALLBACKS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise TransportError(f"mosquitto_passwd not found: {_INSTALL_HINT}")


def _run_passwd(args: list[str], stdin: str | None, what: str) -> None:
    cmd = [_passwd_tool(), *args]
    try:
        proc = subprocess.run(
            cmd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            umask=0o077,  # a file created by -c is 0600 from its first byte
            check=False,
        )
    except FileNotFoundError as e:
        raise TransportError(f"mosquitto_passwd not found ({e}): {_INSTALL_HINT}") from e
    except subprocess.TimeoutExpired as e:
        raise TransportError(f"mosquitto_passwd did not finish within 60 s while trying to {what}") from e
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip() or f"exit status {proc.returncode}"
        raise TransportError(f"mosquitto_passwd could not {what}: {detail}")


def _chown(path: Path, owner: str) -> None:
    try:
        entry = pwd.getpwnam(owner)
    except KeyError as e:
        raise TransportError(f"cannot give {path} to {owner!r}: no such user") from e
    try:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    except PermissionError as e:
        raise TransportError(f"cannot give {path} to {owner!r}: {e} (run as root)") from e


def add_user(passwd_file: Path, username: str, password: str, *, owner: str | None = None) -> None:
    """Add `username` with `password` to a Mosquitto password file, or change its password.

    The file is created (mode 0600) when it does not exist; an existing file is updated in place,
    keeping its mode and owner, with its other users untouched. `owner` (e.g. "mosquitto") chowns the
    file to that user and its primary group: needed when we run as root and the broker drops to it.
    A running broker sees the change after SIGHUP (`systemctl reload mosquitto`).
    Raises ValueError for a bad username or password, TransportError when mosquitto_passwd fails.
    """
    check_username(username)
    _check_password(password)
    passwd_file = Path(passwd_file)
    create = not passwd_file.exists()  # -c truncates: never pass it for an existing file
    args = (["-c"] if create else []) + [str(passwd_file), username]
    _run_passwd(args, f"{password}\n{password}\n", f"add {username!r} to {passwd_file}")
    if create:
        os.chmod(passwd_file, 0o600)
    if owner is not None:
        _chown(passwd_file, owner)


def remove_user(passwd_file: Path, username: str) -> None:
    """Remove `username` from a Mosquitto password file (`mosquitto_passwd -D`).

    Raises TransportError when the file or the user does not exist, or the tool fails. A running
    broker refuses the user's new connections after SIGHUP.
    """
    check_username(username)
    passwd_file = Path(passwd_file)
    if not passwd_file.is_file():
        raise TransportError(f"cannot remove {username!r}: password file {passwd_file} does not exist")
    _run_passwd(["-D", str(passwd_file), username], None, f"remove {username!r} from {passwd_file}")


def list_users(passwd_file: Path) -> list[str]:
    """The usernames of a Mosquitto password file, in file order."""
    names = []
    for line in Path(passwd_file).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#") and ":" in line:
            names.append(line.split(":", 1)[0])
    return names


def _atomic_write(path: Path, text: str, *, mode: int, owner: str | None) -> None:
    """Write `text` to `path` through a temporary file and os.replace.

    An existing file's mode and (when we may) owner carry over to the new one, so a file the
    administrator gave to the broker's user stays readable by it.
    """
    path = Path(path)
    uid = gid = None
    try:
        old = path.stat()
        mode = stat.S_IMODE(old.st_mode)
        uid, gid = old.st_uid, old.st_gid
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if uid is not None and (uid, gid) != (os.geteuid(), os.getegid()):
            with contextlib.suppress(PermissionError):
                os.chown(tmp, uid, gid)
        if owner is not None:
            _chown(Path(tmp), owner)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def acl_text(coordinator_user: str = "coordinator") -> str:
    """The ACL file's text: `topics.acl_lines`, one per line, ending with a newline."""
    text = "\n".join(topics.acl_lines(coordinator_user))
    return text if text.endswith("\n") else text + "\n"


def write_acl(acl_file: Path, coordinator_user: str = "coordinator", *, owner: str | None = None) -> None:
    """Write the ACL of `topics.acl_lines` to `acl_file`, atomically (temporary file, os.replace).

    A new file is 0600; an existing one keeps its mode and owner. `owner` as in `add_user`.
    A running broker applies it after SIGHUP.
    """
    check_username(coordinator_user)
    _atomic_write(Path(acl_file), acl_text(coordinator_user), mode=0o600, owner=owner)


def _conf_path(p: Path | str, what: str) -> str:
    s = os.path.abspath(os.fspath(p))
    if any(c in s for c in "\n\r\0"):
        raise ValueError(f"{what} path contains a line break or NUL: {s!r:.80}")
    return s


def _conf_bind(bind: str) -> str:
    if not bind or any(c.isspace() for c in bind):
        raise ValueError(f"not a bind address: {bind!r:.80}")
    return bind


def _conf_port(port: int, what: str) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"{what} must be a TCP port 1..65535, not {port!r}")
    return port


def write_config(
    conf_file: Path,
    *,
    port: int,
    passwd_file: Path,
    acl_file: Path,
    persistence_dir: Path | None,
    max_packet_bytes: int | None,
    bind: str = "127.0.0.1",
    tls: dict | None = None,
    use_username_as_clientid: bool = False,
    extra_lines: Iterable[str] = (),
) -> None:
    """Write a mosquitto.conf: password + ACL for every listener, no anonymous clients.

    One plain listener on `bind`:`port`. `tls`, when given, adds a TLS listener: keys `cafile`,
    `certfile`, `keyfile` (required), `port` (8883), `bind` (same as `bind`), `require_certificate`
    (False: clients check the server, the server checks passwords), `tls_version` (e.g. "tlsv1.2").
    `persistence_dir` keeps retained messages and persistent sessions across restarts (saved on
    SIGTERM and every autosave interval). `max_packet_bytes` caps every MQTT packet (v5 clients learn
    it from the CONNACK). `use_username_as_clientid` makes every listener replace the client id by
    the username, so one user can no longer take over another's client id and session (Mosquitto
    otherwise lets any authenticated client disconnect the holder of the id it claims); it also means
    one connection per username.
    `extra_lines` go verbatim into the global section, before the listeners (e.g.
    "max_queued_messages 100000"). Only global options belong there: a listener option placed
    before the first `listener` line makes Mosquitto open its default listener, port 1883 on every
    interface. The file is written atomically.
    """
    lines = [
        "# Generated by sda.mqtt.mosquitto.write_config.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {_conf_path(passwd_file, 'password_file')}",
        f"acl_file {_conf_path(acl_file, 'acl_file')}",
    ]
    if persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {_conf_path(persistence_dir, 'persistence')}/"]
    else:
        lines.append("persistence false")
    if max_packet_bytes is not None:
        if not isinstance(max_packet_bytes, int) or not 1 <= max_packet_bytes <= _MAX_PACKET:
            raise ValueError(f"max_packet_bytes must be 1..{_MAX_PACKET}, not {max_packet_bytes!r}")
        lines.append(f"max_packet_size {max_packet_bytes}")
    for extra in extra_lines:
        if "\n" in extra or "\r" in extra:
            raise ValueError(f"an extra config line contains a line break: {extra!r:.80}")
        lines.append(extra)
    per_listener = ["use_username_as_clientid true"] if use_username_as_clientid else []
    lines += ["", f"listener {_conf_port(port, 'port')} {_conf_bind(bind)}", *per_listener]
    if tls is not None:
        unknown = set(tls) - _TLS_KEYS
        if unknown:
            raise ValueError(f"unknown tls keys {sorted(unknown)}; expected some of {sorted(_TLS_KEYS)}")
        missing = {"cafile", "certfile", "keyfile"} - set(tls)
        if missing:
            raise ValueError(f"tls needs cafile, certfile and keyfile; missing {sorted(missing)}")
        tls_port = _conf_port(tls.get("port", 8883), "tls port")
        if tls_port == port:
            raise ValueError(f"the TLS listener cannot share port {port} with the plain one")
        lines += [
            "",
            f"listener {tls_port} {_conf_bind(tls.get('bind', bind))}",
            f"cafile {_conf_path(tls['cafile'], 'cafile')}",
            f"certfile {_conf_path(tls['certfile'], 'certfile')}",
            f"keyfile {_conf_path(tls['keyfile'], 'keyfile')}",
            f"require_certificate {'true' if tls.get('require_certificate', False) else 'false'}",
            *per_listener,
        ]
        if tls.get("tls_version"):
            lines.append(f"tls_version {tls['tls_version']}")
    _atomic_write(Path(conf_file), "\n".join(lines) + "\n", mode=0o644, owner=None)

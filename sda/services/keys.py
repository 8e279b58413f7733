"""Key and credential files of the services: written atomically with mode 0600."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import crypto
from ..errors import CryptoError, SdaError
from ..mqtt.transport import BrokerConfig


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file atomically (temp file, fsync, rename) readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh, exclusive temp name: never an old file with wider permissions, never another
    # writer's half-written one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself survives a power cut
    finally:
        os.close(dfd)


def load_or_create_identity(path: Path) -> crypto.Identity:
    """The party's long-term keys from `path`, generated on first use."""
    path = Path(path)
    if path.exists():
        try:
            return crypto.Identity.from_bytes(path.read_bytes())
        except CryptoError as exc:
            raise CryptoError(f"{path}: not an sda identity file ({exc})") from exc
    ident = crypto.Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # created by whoever gets there first; everyone then uses what is on disk
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return crypto.Identity.from_bytes(path.read_bytes())
    try:
        os.write(fd, ident.to_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)
    return ident


@dataclass(frozen=True)
class Credentials:
    """What `sda admin add-device|add-clerk` hands to a party: its id, broker login, and the
    coordinator's public keys (the trust anchor for announces and jobs)."""

    party_id: str
    role: str
    broker: BrokerConfig
    coordinator_id: str
    coordinator_sign_key: bytes
    coordinator_box_key: bytes

    def to_yaml(self) -> str:
        """YAML text of these credentials."""
        b = self.broker
        return yaml.safe_dump({
            "party_id": self.party_id,
            "role": self.role,
            "broker": {"host": b.host, "port": b.port, "username": b.username, "password": b.password,
                       "tls_ca": b.tls_ca, "protocol": b.protocol},
            "coordinator": {"id": self.coordinator_id, "sign_key": self.coordinator_sign_key.hex(),
                            "box_key": self.coordinator_box_key.hex()},
        }, sort_keys=False)

    @classmethod
    def load(cls, path: Path) -> Credentials:
        """Read a credentials file; SdaError naming the key that is missing or wrong."""
        try:
            d = yaml.safe_load(Path(path).read_text())
            b, c = d["broker"], d["coordinator"]
            creds = cls(
                party_id=_scalar(d["party_id"]), role=_scalar(d["role"]),
                broker=BrokerConfig(host=_scalar(b["host"]), port=int(b["port"]), username=_text(b, "username"),
                                    password=_text(b, "password"), tls_ca=_text(b, "tls_ca"),
                                    protocol=_scalar(b.get("protocol", "auto"))),
                coordinator_id=_scalar(c["id"]), coordinator_sign_key=bytes.fromhex(c["sign_key"]),
                coordinator_box_key=bytes.fromhex(c["box_key"]),
            )
        except (OSError, yaml.YAMLError) as exc:
            raise SdaError(f"cannot read credentials {path}: {exc}") from exc
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: port: .inf
            raise SdaError(f"credentials {path}: missing or malformed entry {exc}") from exc
        if not 0 < creds.broker.port < 65536:
            raise SdaError(f"credentials {path}: broker port {creds.broker.port} is not in 1-65535")
        for name, key in (("sign_key", creds.coordinator_sign_key), ("box_key", creds.coordinator_box_key)):
            if len(key) != crypto.KEY_BYTES:
                raise SdaError(f"credentials {path}: coordinator {name} of {len(key)} bytes, need {crypto.KEY_BYTES}")
        return creds

    def save(self, path: Path) -> None:
        """Write with mode 0600 (it holds the broker password)."""
        write_private(Path(path), self.to_yaml().encode())


def _scalar(v: object) -> str:
    """A name, as text (YAML reads `party_id: 42` as a number); TypeError for a list or a map (whose str could be
    YAML aliases expanded a billion times)."""
    if isinstance(v, list | dict):
        raise TypeError(f"expected a name, got a {type(v).__name__}")
    return str(v)


def _text(d: dict, key: str) -> str | None:
    """An optional text entry of a credentials map; TypeError for a list, a map or a number."""
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise TypeError(f"{key}: expected text, got {type(v).__name__}")
    return v

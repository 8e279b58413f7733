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
            return cls(
                party_id=str(d["party_id"]), role=str(d["role"]),
                broker=BrokerConfig(host=str(b["host"]), port=int(b["port"]), username=b.get("username"),
                                    password=b.get("password"), tls_ca=b.get("tls_ca"),
                                    protocol=str(b.get("protocol", "auto"))),
                coordinator_id=str(c["id"]), coordinator_sign_key=bytes.fromhex(c["sign_key"]),
                coordinator_box_key=bytes.fromhex(c["box_key"]),
            )
        except (OSError, yaml.YAMLError) as exc:
            raise SdaError(f"cannot read credentials {path}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise SdaError(f"credentials {path}: missing or malformed entry {exc}") from exc

    def save(self, path: Path) -> None:
        """Write with mode 0600 (it holds the broker password)."""
        write_private(Path(path), self.to_yaml().encode())

"""A private PostgreSQL server for the tests: initdb + pg_ctl in a temp dir, 127.0.0.1 only.

Imported as `from postgres_server import PostgresServer` (tests/ is on sys.path). Debian keeps the
server binaries (initdb, pg_ctl, postgres) in /usr/lib/postgresql/<version>/bin, off PATH; they are
found by glob, newest version first, then on PATH. The cluster Debian's package may have created
(port 5432) is never used: ours listens on a free port with its Unix socket in its own directory.

initdb and postgres refuse to run as root. When the tests run as root (`make test` in a container),
the binaries run as the `postgres` system user (created by the Debian package) through `runuser`,
and the temp dir is given to that user, as tests/brokers.py does for mosquitto.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from brokers import free_port

HOST = "127.0.0.1"
SUPERUSER = "postgres"
INSTALL_HINT = "run `make test` as root (it installs Debian's postgresql), or `apt-get install postgresql`"


def _version_key(path: str) -> tuple[int, ...]:
    """/usr/lib/postgresql/15/bin -> (15,): sort versions numerically (16 after 9.6)."""
    return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name))


def find_bindir() -> Path | None:
    """The directory with initdb and pg_ctl: Debian's newest /usr/lib/postgresql/*/bin, else PATH."""
    found = [os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    for d in sorted(found, key=_version_key, reverse=True):
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(d)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


class PostgresServer:
    """One PostgreSQL cluster in a temp dir, trust auth, listening on 127.0.0.1:`port` only.

    `dsn(dbname)` gives a postgresql:// URL; `create_database()` a fresh empty database.
    """

    def __init__(self, bindir: Path | None = None) -> None:
        bindir = bindir or find_bindir()
        if bindir is None:
            raise FileNotFoundError(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")
        self.bindir = bindir
        self.host = HOST
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="sda-postgres-"))
        self.datadir = self.workdir / "data"
        self.log_file = self.workdir / "postgres.log"
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise RuntimeError(f"running as root but there is no `postgres` user: {INSTALL_HINT}") from exc
            shutil.chown(self.workdir, "postgres", "postgres")
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self._databases = 0
        self.running = False

    def _run(self, binary: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        cmd = [*self._run_as, str(self.bindir / binary), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd=self.workdir, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                               f"\n{self.log_tail()}")
        return proc

    def start(self) -> PostgresServer:
        """initdb (trust auth, no fsync) and `pg_ctl start -w` on 127.0.0.1:port."""
        self._run("initdb", "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust", "--no-sync",
                  "--encoding=UTF8", "--locale=C")
        opts = (f"-c listen_addresses={HOST} -p {self.port} -c unix_socket_directories={self.workdir}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.datadir), "-l", str(self.log_file),
                  "-o", opts)
        self.running = True
        return self

    def stop(self) -> None:
        """`pg_ctl stop -m fast` (disconnects clients)."""
        if self.running:
            self.running = False
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.datadir))

    def cleanup(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def create_database(self, prefix: str = "sda") -> str:
        """A new empty database; returns its DSN."""
        import psycopg

        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no postgres log)"

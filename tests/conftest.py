"""Shared fixtures. The broker itself lives in tests/brokers.py; this file only wires it in."""

from __future__ import annotations

import os

import pytest
from brokers import MOSQUITTO, MosquittoBroker


@pytest.fixture(scope="session")
def mosquitto():
    """A real Mosquitto 2.x broker for the whole session: users coordinator, dev1, dev2, clerk1,
    clerk2 (passwords in `.passwords`), the sda ACL, persistence in its temp dir.

    Never skipped: without Mosquitto the test fails and says how to get it.
    """
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.fail(
            f"{MOSQUITTO} is missing: run `make test` as root (it installs Debian's mosquitto), "
            "or `apt-get install mosquitto`",
            pytrace=False,
        )
    broker = MosquittoBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL for the whole session (tests/postgres_server.py): 127.0.0.1, a free
    port, trust auth, its own temp dir; stopped and deleted at the end.

    Never skipped: without the server binaries the test fails and says how to get them.
    """
    from postgres_server import INSTALL_HINT, PostgresServer, find_bindir

    if find_bindir() is None:
        pytest.fail(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}", pytrace=False)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_dsn(postgres_server) -> str:
    """A fresh empty database on the session's PostgreSQL: its postgresql:// URL."""
    return postgres_server.create_database()


@pytest.fixture
def cluster(tmp_path):
    """A deployment for one test (tests/cluster.py): its own Mosquitto with users for the
    coordinator, 12 clerks and 50 devices; every process it starts is stopped at the end."""
    from cluster import Cluster

    c = Cluster(tmp_path, clerks=12, devices=50)
    try:
        yield c
    finally:
        c.close()

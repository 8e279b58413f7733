"""The two coordinator stores, SqliteStore and PostgresStore, held to the same behaviour.

Every test runs against both (`kind` parameter); PostgreSQL is the session's private server
(conftest.py `postgres_server`), a fresh database per test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from sda.cli import main
from sda.errors import StorageError
from sda.services.postgres import PostgresStore
from sda.services.storage import OPEN_STATES, CoordinatorStore, SqliteStore, open_store

KINDS = ["sqlite", "postgres"]


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def target(kind, tmp_path, request) -> str:
    """Where the store of this test lives: a SQLite file path or a PostgreSQL DSN."""
    if kind == "sqlite":
        return str(tmp_path / "coordinator.db")
    return request.getfixturevalue("postgres_dsn")


@pytest.fixture
def connect(kind, target) -> Callable[[], CoordinatorStore]:
    """Open another store (another connection) on the same database; all closed at the end."""
    opened: list[CoordinatorStore] = []

    def _open() -> CoordinatorStore:
        s = SqliteStore(Path(target)) if kind == "sqlite" else PostgresStore(target)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


@pytest.fixture
def store(connect) -> CoordinatorStore:
    return connect()


def _set_schema_version(kind: str, target: str, value: str) -> None:
    if kind == "sqlite":
        import sqlite3

        with sqlite3.connect(target) as db:
            db.execute("UPDATE meta SET value=? WHERE key='schema'", (value,))
    else:
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("UPDATE meta SET value=%s WHERE key='schema'", (value,))


# --- parties ---------------------------------------------------------------------------------


def test_party_registration_is_idempotent_and_refuses_other_keys(store):
    assert store.add_party("dev1", "device", b"S1", b"B1") is True
    assert store.add_party("dev1", "device", b"S1", b"B1") is False  # a redelivered registration
    with pytest.raises(StorageError, match="dev1"):
        store.add_party("dev1", "device", b"S2", b"B1")
    with pytest.raises(StorageError, match="dev1"):
        store.add_party("dev1", "device", b"S1", b"B2")
    with pytest.raises(StorageError, match="dev1"):
        store.add_party("dev1", "clerk", b"S1", b"B1")
    [p] = store.parties()
    assert (p.party_id, p.role, p.sign_key, p.box_key) == ("dev1", "device", b"S1", b"B1")
    assert store.add_party("dev2", "device", b"S1", b"B1") is True  # keys are not unique, ids are
    assert [p.party_id for p in store.parties()] == ["dev1", "dev2"]


def test_seq_is_registration_order_and_survives_reopening(store, connect):
    names = [("clerk-b", "clerk"), ("dev-z", "device"), ("dev-a", "device"), ("clerk-a", "clerk"), ("dev-m", "device")]
    for name, role in names:
        assert store.add_party(name, role, name.encode() + b"-sign", name.encode() + b"-box")
    assert not store.add_party("dev-z", "device", b"dev-z-sign", b"dev-z-box")  # no new seq for a duplicate
    everyone = store.parties()
    assert [p.party_id for p in everyone] == [n for n, _ in names]
    seqs = [p.seq for p in everyone]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [p.party_id for p in store.parties("device")] == ["dev-z", "dev-a", "dev-m"]
    assert [p.party_id for p in store.parties("clerk")] == ["clerk-b", "clerk-a"]
    assert all(p.sign_key == p.party_id.encode() + b"-sign" for p in everyone)
    again = connect()
    assert again.parties() == everyone
    assert again.add_party("dev-n", "device", b"s", b"b")
    assert again.parties()[-1].party_id == "dev-n" and again.parties()[-1].seq > seqs[-1]


def test_registry_rows_refuse_an_unknown_role(store):
    with pytest.raises(Exception):  # noqa: B017 (sqlite3.IntegrityError / psycopg CheckViolation)
        store.add_party("x", "admin", b"s", b"b")
    assert store.parties() == []
    assert store.add_party("x", "device", b"s", b"b")  # the store is usable after the rolled-back insert


# --- aggregations ----------------------------------------------------------------------------


def test_aggregation_lifecycle_writes(store):
    spec = {"aggregation_id": "r1", "dimension": 4, "scale": 1.0, "committee_size": None}
    assert store.create_aggregation("r1", spec) is True
    assert store.create_aggregation("r1", {"other": True}) is False
    row = store.aggregation("r1")
    assert (row.state, row.spec, row.announce, row.result, row.error) == ("pending", spec, None, None, None)
    assert row.created_at == row.updated_at > 0
    assert store.aggregation("nope") is None
    assert store.announced_count() == 0

    store.set_announced("r1", b"\x00announce\xff")
    assert store.announced_count() == 1
    row = store.aggregation("r1")
    assert (row.state, row.announce) == ("collecting", b"\x00announce\xff")
    assert row.updated_at >= row.created_at

    for i in range(5):
        assert store.add_participation("r1", f"dev{i}", bytes([i]) * 10, b"seed%d" % i)
    assert store.participation_count("r1") == 5
    assert store.participation_count("other") == 0
    assert sorted(store.participations("r1")) == [(f"dev{i}", bytes([i]) * 10, b"seed%d" % i) for i in range(5)]

    store.set_snapshot("r1", b"H" * 32, b"\x1f", [("c1", b"job1"), ("c2", b"job2")])
    row = store.aggregation("r1")
    assert (row.state, row.snapshot_hash, row.bitmap) == ("computing", b"H" * 32, b"\x1f")
    assert sorted(store.jobs("r1")) == [("c1", b"job1"), ("c2", b"job2")]
    store.set_snapshot("r1", b"H" * 32, b"\x1f", [("c1", b"job1-again")])  # a job is replaced, not duplicated
    assert sorted(store.jobs("r1")) == [("c1", b"job1-again"), ("c2", b"job2")]

    assert store.add_result("r1", "c1", b"res1")
    assert store.results("r1") == [("c1", b"res1")]
    assert [r.aggregation_id for r in store.aggregations(OPEN_STATES)] == ["r1"]

    result = {"values": [1.5, -2.0], "participants": 5, "wrong_clerks": []}
    store.finish("r1", "revealed", result, None)
    row = store.aggregation("r1")
    assert (row.state, row.result, row.error) == ("revealed", result, None)
    assert store.aggregations(OPEN_STATES) == []
    assert store.aggregations(("revealed",)) == [row]

    assert store.create_aggregation("r2", {"n": 2})
    store.finish("r2", "failed", None, "too few participants")
    row2 = store.aggregation("r2")
    assert (row2.state, row2.result, row2.error) == ("failed", None, "too few participants")
    assert [r.aggregation_id for r in store.aggregations()] == ["r1", "r2"]  # by creation time
    assert store.announced_count() == 1  # r2 failed before any announce
    assert [r.aggregation_id for r in store.aggregations(("failed", "pending"))] == ["r2"]


def test_duplicate_participation_and_result_return_false_and_keep_the_first(store):
    for agg in ("r", "r2"):
        store.create_aggregation(agg, {})
        store.set_announced(agg, b"announce")
    assert store.add_participation("r", "dev1", b"first", b"seed1") is True
    assert store.add_participation("r", "dev1", b"second", b"seed2") is False
    assert store.add_participation("r2", "dev1", b"other round", b"s") is True  # per aggregation
    assert store.participations("r") == [("dev1", b"first", b"seed1")]
    assert store.participation_count("r") == 1
    assert store.add_result("r", "c1", b"first") is True
    assert store.add_result("r", "c1", b"second") is False
    assert store.results("r") == [("c1", b"first")]


def test_json_and_blobs_round_trip_exactly(store, connect):
    spec = {
        "aggregation_id": "ünïcode-☃", "dimension": 3, "scale": 0.1, "tiny": 1e-300, "huge": 1.7976931348623157e308,
        "big_int": 2**80, "neg": -(2**63), "none": None, "flags": [True, False],
        "nested": {"a": [[1, 2.5], {"b": "c"}]}, "quote": 'say "hi"\n\t\\', "empty": {}, "zero": -0.0,
    }
    assert store.create_aggregation("j", spec)
    blob = bytes(range(256)) * 4
    store.set_announced("j", blob)
    result = {"values": [0.30000000000000004, -1e-12, 123456789.123], "field_sum": [2**61 - 2], "revealed_at": 1.5}
    store.finish("j", "revealed", result, None)
    for s in (store, connect()):
        row = s.aggregation("j")
        assert row.spec == spec and row.result == result and row.announce == blob
        assert type(row.spec["big_int"]) is int and type(row.spec["scale"]) is float
        assert str(row.spec["zero"]) == "-0.0"
    assert store.add_party("p", "device", b"\x00" * 32, b"\xff\x00" * 16)
    assert store.parties()[0].sign_key == b"\x00" * 32 and store.parties()[0].box_key == b"\xff\x00" * 16


def test_schema_version_is_checked(kind, target, connect):
    connect().create_aggregation("kept", {})
    _set_schema_version(kind, target, "99")
    with pytest.raises(StorageError, match="schema version 99"):
        connect()
    _set_schema_version(kind, target, "1")
    assert connect().aggregation("kept").state == "pending"


# --- concurrency ----------------------------------------------------------------------------


def _run_threads(fns: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(fns))

    def wrap(fn):
        def run():
            try:
                barrier.wait(10)
                fn()
            except BaseException as exc:
                errors.append(exc)
        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_concurrent_writers_on_two_connections_lose_no_rows(connect):
    """Two ingest workers: each stores 150 participations, 50 of them the same devices (a message
    redelivered to the other worker). Every row arrives, and each shared device wins exactly once."""
    a, b = connect(), connect()
    a.create_aggregation("c", {})
    a.set_announced("c", b"announce")
    won: dict[str, list[str]] = {"a": [], "b": []}

    def writer(store, name, devices):
        def run():
            for d in devices:
                if store.add_participation("c", d, f"{d}-by-{name}".encode(), b"seed"):
                    won[name].append(d)
        return run

    devices_a = [f"dev{i:03d}" for i in range(0, 150)]
    devices_b = [f"dev{i:03d}" for i in range(100, 250)]
    _run_threads([writer(a, "a", devices_a), writer(b, "b", devices_b)])
    everyone = sorted(set(devices_a) | set(devices_b))
    assert sorted(won["a"] + won["b"]) == everyone  # no loss, no double win
    assert set(won["a"]) >= set(devices_a) - set(devices_b) and set(won["b"]) >= set(devices_b) - set(devices_a)
    fresh = connect()
    assert fresh.participation_count("c") == 250
    rows = fresh.participations("c")
    assert sorted(d for d, _, _ in rows) == everyone
    winner = {d: w for w, ds in won.items() for d in ds}
    assert all(shares == f"{d}-by-{winner[d]}".encode() for d, shares, _ in rows)


def test_concurrent_registrations_get_distinct_ordered_seqs(connect):
    a, b = connect(), connect()
    names = [f"dev{i:02d}" for i in range(60)]
    results: dict[str, list[bool]] = {"a": [], "b": []}

    def register(store, key, order):
        def run():
            for n in order:
                results[key].append(store.add_party(n, "device", n.encode(), b"box"))
        return run

    _run_threads([register(a, "a", names), register(b, "b", list(reversed(names)))])
    assert sum(results["a"]) + sum(results["b"]) == 60  # each party registered exactly once
    parties = connect().parties()
    assert sorted(p.party_id for p in parties) == names
    seqs = [p.seq for p in parties]
    assert seqs == sorted(seqs) and len(set(seqs)) == 60


# --- choosing the store ----------------------------------------------------------------------


def test_open_store_reads_the_database_option(tmp_path, postgres_dsn, monkeypatch):
    state = tmp_path / "state"
    s = open_store(None, state)
    assert isinstance(s, SqliteStore) and s.path == state / "coordinator.db"
    s.close()
    monkeypatch.chdir(tmp_path)
    for url, path in [("sqlite:///rel/a.db", Path("rel/a.db")), (f"sqlite:///{tmp_path}/b.db", tmp_path / "b.db"),
                      (str(tmp_path / "c.db"), tmp_path / "c.db")]:
        s = open_store(url, state)
        assert isinstance(s, SqliteStore) and s.path == path and (tmp_path / path).exists()
        s.close()
    assert open_store("sqlite:///rel/a.db", state, must_exist=True).path == Path("rel/a.db")
    with pytest.raises(StorageError, match="no coordinator database"):
        open_store(None, tmp_path / "missing", must_exist=True)
    with pytest.raises(StorageError, match="mysql://"):
        open_store("mysql://x/y", state)
    pg = open_store(postgres_dsn, state)
    assert isinstance(pg, PostgresStore)
    pg.close()
    with pytest.raises(StorageError, match="cannot open the coordinator database"):
        open_store(postgres_dsn.rsplit("/", 1)[0] + "/no_such_db", state)


def test_cli_new_and_show_use_the_database_option(tmp_path, postgres_dsn, capsys):
    state = tmp_path / "state"
    argv = ["--state", str(state), "--database", postgres_dsn]
    assert main(["coordinator", "new", "round-pg", "--dimension", "3", *argv]) == 0
    assert main(["coordinator", "new", "round-pg", "--dimension", "3", *argv]) == 1
    capsys.readouterr()
    assert main(["coordinator", "show", "round-pg", "--json", *argv]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "pending" and shown["spec"]["dimension"] == 3 and shown["participations"] == 0
    assert not (state / "coordinator.db").exists()  # nothing went to the default SQLite file
    pg = PostgresStore(postgres_dsn)
    assert pg.aggregation("round-pg").spec["dimension"] == 3
    pg.close()
    assert main(["coordinator", "show", "--state", str(state)]) == 1  # the default SQLite file does not exist
    assert "no coordinator database" in capsys.readouterr().err


def test_participations_are_stored_only_while_collecting_and_read_in_arrival_order(store):
    assert store.add_participation("nope", "dev1", b"x", b"s") is False  # no such aggregation
    store.create_aggregation("r", {})
    assert store.add_participation("r", "dev1", b"x", b"s") is False  # pending: not announced yet
    store.set_announced("r", b"announce")
    for d in ("dev9", "dev2", "dev5"):
        assert store.add_participation("r", d, d.encode(), b"s") is True
    assert [p[0] for p in store.participations("r")] == ["dev9", "dev2", "dev5"]
    assert store.close_collection("r") is True
    assert store.close_collection("r") is False  # only once
    assert store.add_participation("r", "dev7", b"late", b"s") is False  # closing: the snapshot reads now
    assert store.participation_count("r") == 3
    assert store.aggregation("r").state == "closing"

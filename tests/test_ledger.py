"""Tests of sda/ledger.py: the coordinator's double-entry token ledger and its signed receipts.

Each operation and each refusal is tested on its own; a hypothesis state machine then runs random
operation sequences against a plain-Python model and checks the ledger's invariants after every
step; the last tests kill a process mid-run and make a transaction fail halfway.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sda import crypto
from sda.errors import BadSignature, MessageError, SdaError, UnknownSender
from sda.ledger import (
    MAX_SUPPLY,
    Balance,
    Entry,
    Ledger,
    LedgerError,
    Receipt,
    Standing,
    verify_receipt,
)
from sda.protocol.messages import Envelope, seal

REPO = Path(__file__).resolve().parents[1]
COORD = "coordinator"


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    yield led
    led.close()


def dump(path: Path) -> tuple[list[tuple], ...]:
    """Every row of every table, read through a connection of its own."""
    db = sqlite3.connect(str(path))
    try:
        return tuple(
            db.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            for table, order in (("entries", "entry_id"), ("postings", "rowid"),
                                 ("locks", "party_id, aggregation_id"), ("standing", "party_id"))
        )
    finally:
        db.close()


def funded(led: Ledger, party: str = "c1", available: int = 100, staked: int = 0, treasury: int = 0) -> None:
    if available + staked:
        led.mint(party, available + staked)
    if staked:
        led.stake(party, staked)
    if treasury:
        led.mint("treasury", treasury)


# --- opening -------------------------------------------------------------------------------


def test_database_is_wal_with_full_sync_and_has_the_tables(ledger):
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    tables = {r[0] for r in ledger._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"entries", "postings", "locks", "standing"} <= tables


def test_empty_ledger(ledger):
    assert ledger.balance("c1") == Balance(0, 0)
    assert ledger.supply() == 0
    assert ledger.total() == 0
    assert ledger.stakes() == {}
    assert ledger.history("c1") == []
    assert ledger.standing("c1") == Standing(0, False)
    assert ledger.entry(1) is None


# --- mint ----------------------------------------------------------------------------------


def test_mint_credits_the_party_and_grows_the_supply(ledger):
    e = ledger.mint("c1", 100, memo="genesis")
    assert e.kind == "mint" and e.memo == "genesis"
    assert e.postings == (("mint", "issued", -100), ("c1", "available", 100))
    ledger.mint("treasury", 50)
    assert ledger.balance("c1") == Balance(100, 0)
    assert ledger.balance("treasury") == Balance(50, 0)
    assert ledger.supply() == 150
    assert ledger.total() == 0


def test_mint_is_idempotent_by_key(ledger):
    first = ledger.mint("c1", 100, key="grant/c1")
    again = ledger.mint("c1", 100, key="grant/c1")
    assert again == first
    assert ledger.supply() == 100 and ledger.balance("c1").available == 100


def test_mint_past_the_supply_cap_is_refused(ledger):
    ledger.mint("c1", MAX_SUPPLY)
    with pytest.raises(LedgerError, match="supply"):
        ledger.mint("c2", 1)
    assert ledger.supply() == MAX_SUPPLY


# --- stake / unstake -----------------------------------------------------------------------


def test_stake_moves_available_to_staked(ledger):
    funded(ledger, available=100)
    e = ledger.stake("c1", 40)
    assert e.postings == (("c1", "available", -40), ("c1", "staked", 40))
    assert ledger.balance("c1") == Balance(60, 40)
    assert ledger.stakes() == {"c1": 40}
    assert ledger.supply() == 100


def test_stake_more_than_available_is_refused_and_changes_nothing(ledger):
    funded(ledger, available=10)
    before = dump(ledger.path)
    with pytest.raises(LedgerError, match=r"'c1' cannot stake 50: only 10 available"):
        ledger.stake("c1", 50)
    assert dump(ledger.path) == before
    assert ledger.balance("c1") == Balance(10, 0)


def test_unstake_moves_staked_back(ledger):
    funded(ledger, available=10, staked=30)
    e = ledger.unstake("c1", 20)
    assert e.postings == (("c1", "staked", -20), ("c1", "available", 20))
    assert ledger.balance("c1") == Balance(30, 10)
    assert ledger.stakes() == {"c1": 10}
    ledger.unstake("c1", 10)
    assert ledger.stakes() == {}


def test_unstake_more_than_staked_is_refused(ledger):
    funded(ledger, available=100, staked=30)
    before = dump(ledger.path)
    with pytest.raises(LedgerError, match=r"'c1' cannot unstake 31: only 30 staked"):
        ledger.unstake("c1", 31)
    assert dump(ledger.path) == before


def test_unstake_while_locked_is_refused_until_unlocked(ledger):
    funded(ledger, available=0, staked=30)
    assert ledger.lock("c1", "agg-1") is True
    assert ledger.lock("c1", "agg-1") is False  # already locked
    assert ledger.lock("c1", "agg-2") is True
    assert ledger.locks("c1") == ["agg-1", "agg-2"]
    before = dump(ledger.path)
    with pytest.raises(LedgerError, match=r"'c1' cannot unstake 5: .*locked .*\['agg-1', 'agg-2'\]"):
        ledger.unstake("c1", 5)
    assert dump(ledger.path) == before
    assert ledger.unlock_all("agg-1") == 1
    with pytest.raises(LedgerError, match="agg-2"):
        ledger.unstake("c1", 5)
    assert ledger.unlock_all("agg-2") == 1
    assert ledger.unlock_all("agg-2") == 0
    assert ledger.locks("c1") == []
    ledger.unstake("c1", 5)
    assert ledger.balance("c1") == Balance(5, 25)


def test_unlock_all_releases_only_that_aggregation(ledger):
    ledger.lock("c1", "a1")
    ledger.lock("c2", "a1")
    ledger.lock("c2", "a2")
    assert ledger.unlock_all("a1") == 2
    assert ledger.locks("c1") == [] and ledger.locks("c2") == ["a2"]


def test_a_repeated_keyed_unstake_returns_the_first_even_if_locked_since(ledger):
    funded(ledger, available=0, staked=30)
    first = ledger.unstake("c1", 10, key="u1")
    ledger.lock("c1", "a1")
    assert ledger.unstake("c1", 10, key="u1") == first
    assert ledger.balance("c1") == Balance(10, 20)


# --- reward --------------------------------------------------------------------------------


def test_reward_pays_from_the_treasury(ledger):
    funded(ledger, available=0, treasury=50)
    e = ledger.reward("c1", 20, memo="agg a1", key="reward/a1/c1")
    assert e.postings == (("treasury", "available", -20), ("c1", "available", 20))
    assert ledger.balance("c1") == Balance(20, 0)
    assert ledger.balance("treasury") == Balance(30, 0)
    assert ledger.supply() == 50  # a reward moves tokens; it issues none


def test_a_repeated_reward_with_the_same_key_pays_once(ledger):
    funded(ledger, available=0, treasury=50)
    first = ledger.reward("c1", 20, "agg a1", key="reward/a1/c1")
    before = dump(ledger.path)
    again = ledger.reward("c1", 20, "agg a1", key="reward/a1/c1")
    assert again == first
    assert dump(ledger.path) == before
    assert ledger.balance("c1").available == 20
    # another key is another payment
    ledger.reward("c1", 20, "agg a2", key="reward/a2/c1")
    assert ledger.balance("c1").available == 40


def test_reward_beyond_the_treasury_is_refused(ledger):
    funded(ledger, available=0, treasury=10)
    before = dump(ledger.path)
    with pytest.raises(LedgerError, match=r"cannot reward 'c1' with 11: the treasury holds only 10"):
        ledger.reward("c1", 11, "x", key="reward/a1/c1")
    assert dump(ledger.path) == before
    # the refused call did not use up the key
    ledger.mint("treasury", 1)
    ledger.reward("c1", 11, "x", key="reward/a1/c1")
    assert ledger.balance("c1").available == 11


def test_a_key_reused_for_another_operation_is_refused(ledger):
    funded(ledger, available=100, treasury=100)
    ledger.reward("c1", 5, key="k")
    with pytest.raises(LedgerError, match=r"key 'k' already names entry .* not a slash for 'c1'"):
        ledger.slash("c1", 0.5, key="k")
    with pytest.raises(LedgerError, match=r"not a reward for 'c2'"):
        ledger.reward("c2", 5, key="k")
    assert ledger.balance("c2") == Balance(0, 0)


# --- slash ---------------------------------------------------------------------------------


def test_slash_burns_the_floor_of_the_fraction(ledger):
    funded(ledger, available=0, staked=99)
    e = ledger.slash("c1", 0.25, memo="late", key="slash/a1/c1")
    assert e.postings == (("c1", "staked", -24), ("burn", "available", 24))  # floor(24.75)
    assert ledger.balance("c1") == Balance(0, 75)
    assert ledger.balance("burn") == Balance(24, 0)
    assert ledger.supply() == 99  # burnt tokens stay counted, in "burn"
    ledger.slash("c1", 1.0, memo="wrong result")
    assert ledger.balance("c1") == Balance(0, 0)
    assert ledger.balance("burn").available == 99
    assert ledger.stakes() == {}


def test_slash_floor_is_exact_for_large_stakes(ledger):
    stake = 2**60 + 1
    funded(ledger, available=0, staked=stake)
    e = ledger.slash("c1", 0.1)
    assert -e.change("c1", "staked") == math.floor(stake * Fraction(0.1))


def test_slash_of_nothing_is_recorded_as_a_zero_entry(ledger):
    funded(ledger, available=10)
    e = ledger.slash("c1", 0.5, memo="late, nothing staked")
    assert e.postings == (("c1", "staked", 0), ("burn", "available", 0))
    assert ledger.history("c1")[0] == e
    assert ledger.balance("c1") == Balance(10, 0)


def test_a_repeated_slash_with_the_same_key_slashes_once(ledger):
    funded(ledger, available=0, staked=100)
    first = ledger.slash("c1", 0.5, "wrong", key="slash/a1/c1")
    assert ledger.slash("c1", 0.5, "wrong", key="slash/a1/c1") == first
    assert ledger.balance("c1").staked == 50


@pytest.mark.parametrize("fraction", [-0.01, 1.01, math.nan, math.inf, -math.inf, True, "0.5", None])
def test_slash_fraction_out_of_range_is_refused(ledger, fraction):
    funded(ledger, available=0, staked=100)
    before = dump(ledger.path)
    with pytest.raises(LedgerError, match=r"cannot slash 'c1': fraction must be a number in \[0, 1\]"):
        ledger.slash("c1", fraction, "x")
    assert dump(ledger.path) == before


# --- argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize("op", ["mint", "stake", "unstake", "reward"])
@pytest.mark.parametrize("amount", [0, -1, -100, 1.5, 2.0, True, "5", None, MAX_SUPPLY + 1])
def test_bad_amounts_are_refused(ledger, op, amount):
    funded(ledger, available=100, staked=100, treasury=100)
    before = dump(ledger.path)
    with pytest.raises(LedgerError, match=rf"cannot {op}.*'c1'.*amount must be"):
        getattr(ledger, op)("c1", amount)
    assert dump(ledger.path) == before


@pytest.mark.parametrize("call", [
    lambda led: led.stake("treasury", 1),
    lambda led: led.unstake("burn", 1),
    lambda led: led.reward("treasury", 1),
    lambda led: led.slash("mint", 0.5),
    lambda led: led.mint("mint", 1),
    lambda led: led.mint("burn", 1),
    lambda led: led.lock("treasury", "a1"),
    lambda led: led.exclude("burn"),
])
def test_system_accounts_are_refused_as_ordinary_parties(ledger, call):
    ledger.mint("treasury", 100)
    before = dump(ledger.path)
    with pytest.raises(LedgerError, match="system account"):
        call(ledger)
    assert dump(ledger.path) == before


@pytest.mark.parametrize("party", ["", "has space", "a/b", "x" * 65, 7, None])
def test_bad_party_ids_are_refused(ledger, party):
    with pytest.raises(LedgerError, match="party"):
        ledger.mint(party, 1)
    assert ledger.supply() == 0


def test_bad_memo_or_key_is_refused(ledger):
    with pytest.raises(LedgerError, match="memo"):
        ledger.mint("c1", 1, memo="m" * 201)
    with pytest.raises(LedgerError, match="key"):
        ledger.mint("c1", 1, key="")
    with pytest.raises(LedgerError, match="aggregation_id"):
        ledger.lock("c1", "a b")
    assert ledger.supply() == 0
    ledger.mint("c1", 1, memo="m" * 200)
    assert ledger.supply() == 1


# --- standing ------------------------------------------------------------------------------


def test_cooldown_and_exclusion_decide_eligibility(ledger):
    assert ledger.eligible("c1", 0)
    ledger.set_cooldown("c1", 10)
    assert ledger.standing("c1") == Standing(10, False)
    assert not ledger.eligible("c1", 9)
    assert ledger.eligible("c1", 10)
    ledger.set_cooldown("c1", 3)  # set, not max: the coordinator decides
    assert ledger.standing("c1") == Standing(3, False)
    ledger.exclude("c1")
    assert ledger.standing("c1") == Standing(3, True)
    assert not ledger.eligible("c1", 1000)
    assert ledger.eligible("c2", 0)
    with pytest.raises(LedgerError, match="until_round"):
        ledger.set_cooldown("c2", -1)


# --- queries -------------------------------------------------------------------------------


def test_history_is_newest_first_limited_and_only_the_party(ledger):
    ledger.mint("treasury", 100)
    a = ledger.mint("c1", 10)
    ledger.mint("c2", 10)
    b = ledger.stake("c1", 5)
    c = ledger.reward("c1", 3)
    assert ledger.history("c1") == [c, b, a]
    assert ledger.history("c1", limit=2) == [c, b]
    assert [e.kind for e in ledger.history("treasury")] == ["reward", "mint"]
    assert ledger.entry(b.entry_id) == b


def test_stakes_lists_every_positive_stake(ledger):
    funded(ledger, "c1", available=0, staked=5)
    funded(ledger, "c2", available=10, staked=7)
    funded(ledger, "c3", available=10)
    assert ledger.stakes() == {"c1": 5, "c2": 7}
    ledger.slash("c1", 1.0)
    assert ledger.stakes() == {"c2": 7}


def test_entry_digest_is_canonical_and_covers_every_field(ledger):
    e = ledger.mint("c1", 10, memo="m")
    stored = ledger.history("c1")[0]
    assert stored == e and stored.digest() == e.digest() and len(e.digest()) == 32
    variants = [replace(e, entry_id=2), replace(e, time=e.time + 1e-6), replace(e, kind="reward"),
                replace(e, memo="n"), replace(e, postings=(("mint", "issued", -11), ("c1", "available", 11)))]
    assert len({v.digest() for v in variants} | {e.digest()}) == len(variants) + 1


# --- receipts ------------------------------------------------------------------------------


def test_receipt_round_trip_matches_the_ledger():
    with tempfile.TemporaryDirectory() as d:
        led = Ledger(Path(d) / "l.db")
        funded(led, available=100, staked=40, treasury=100)
        e = led.slash("c1", 0.5, memo="late in a7", key="slash/a7/c1")
        r = led.receipt_for(e, "c1")
        ident = crypto.Identity.generate()
        raw = seal(r, COORD, ident)
        got = verify_receipt(raw, COORD, ident.public().sign_key, party_id="c1")
        assert got == r
        assert (got.kind, got.memo, got.entry_id) == ("slash", "late in a7", e.entry_id)
        assert got.amount_staked == -20 and got.amount_available == 0
        assert (got.available_after, got.staked_after) == (100, 20) == (led.balance("c1").available,
                                                                       led.balance("c1").staked)
        assert got.entry_digest == e.digest() and got.time == e.time
        led.close()


def test_receipt_balances_are_those_right_after_the_entry(ledger):
    funded(ledger, available=100, treasury=100)
    s = ledger.stake("c1", 30)
    ledger.reward("c1", 5)
    r = ledger.receipt_for(s, "c1")
    assert (r.amount_available, r.amount_staked) == (-30, 30)
    assert (r.available_after, r.staked_after) == (70, 30)  # not the later 75
    t = ledger.receipt_for(ledger.history("treasury")[0], "treasury")
    assert (t.kind, t.amount_available, t.available_after) == ("reward", -5, 95)


def test_receipt_for_an_unrelated_party_or_a_foreign_entry_is_refused(ledger):
    e = ledger.mint("c1", 10)
    with pytest.raises(LedgerError, match="does not touch 'c2'"):
        ledger.receipt_for(e, "c2")
    with pytest.raises(LedgerError, match="not in this ledger"):
        ledger.receipt_for(replace(e, postings=(("mint", "issued", -99), ("c1", "available", 99))), "c1")


def test_tampered_or_foreign_receipts_are_refused(ledger):
    funded(ledger, available=100, treasury=100)
    r = ledger.receipt_for(ledger.reward("c1", 5, "r"), "c1")
    coord = crypto.Identity.generate()
    other = crypto.Identity.generate()
    key = coord.public().sign_key
    raw = seal(r, COORD, coord)
    assert verify_receipt(raw, COORD, key) == r
    # a changed payload under the original signature
    env = Envelope.decode(raw)
    forged = replace(r, amount_available=500, available_after=600).encode()
    with pytest.raises(BadSignature):
        verify_receipt(Envelope(env.signer, forged, env.signature).encode(), COORD, key)
    # a flipped signature bit
    sig = bytes([env.signature[0] ^ 1]) + env.signature[1:]
    with pytest.raises(BadSignature):
        verify_receipt(Envelope(env.signer, env.payload, sig).encode(), COORD, key)
    # someone else's key signing as the coordinator, or signing as itself
    with pytest.raises(BadSignature):
        verify_receipt(seal(r, COORD, other), COORD, key)
    with pytest.raises(UnknownSender):
        verify_receipt(seal(r, "mallory", other), COORD, key)
    # a valid receipt for someone else
    with pytest.raises(LedgerError, match="is for 'c1', not 'c2'"):
        verify_receipt(raw, COORD, key, party_id="c2")
    # garbage
    with pytest.raises(MessageError):
        verify_receipt(raw[:-3], COORD, key)


def test_receipt_schema_is_strict():
    good = Receipt("c1", 1, "reward", "m", 5, 0, 5, 0, 1000.0, bytes(32))
    assert Receipt.decode(good.encode()) == good
    for bad in (replace(good, memo="m" * 201), replace(good, kind="gift"), replace(good, entry_digest=bytes(31)),
                replace(good, party_id="no such/id"), replace(good, entry_id=0), replace(good, time=-1.0)):
        with pytest.raises(MessageError):
            Receipt.decode(bad.encode())
    wire = good.to_wire()
    wire["amount_staked"] = 1.5
    from sda.protocol import codec
    with pytest.raises(MessageError, match="amount_staked"):
        Receipt.decode(codec.pack(wire))


# --- crash safety --------------------------------------------------------------------------


class _Flaky(Ledger):
    """Raises after the n-th posting insert of the next operation (a crash mid-transaction)."""

    fail_after: int | None = None
    skew: int = 0

    def _post(self, db, entry_id, party_id, book, amount):
        super()._post(db, entry_id, party_id, book, amount + self.skew)
        if self.fail_after is not None:
            self.fail_after -= 1
            if self.fail_after == 0:
                self.fail_after = None
                raise RuntimeError("power cut")


def test_an_operation_failing_halfway_leaves_nothing_behind(tmp_path):
    led = _Flaky(tmp_path / "l.db")
    funded(led, available=0, treasury=100)
    before = dump(led.path)
    led.fail_after = 1  # after the treasury's debit, before the party's credit
    with pytest.raises(RuntimeError, match="power cut"):
        led.reward("c1", 30, "r", key="reward/a1/c1")
    assert dump(led.path) == before
    assert led.balance("treasury").available == 100 and led.total() == 0
    # the key was not consumed: the retry pays, once
    e = led.reward("c1", 30, "r", key="reward/a1/c1")
    assert led.reward("c1", 30, "r", key="reward/a1/c1") == e
    assert led.balance("c1").available == 30
    led.close()


def test_an_unbalanced_entry_is_caught_before_commit(tmp_path):
    led = _Flaky(tmp_path / "l.db")
    led.mint("c1", 10)
    before = dump(led.path)
    led.skew = 1  # every posting one token off: the entry no longer sums to zero
    with pytest.raises(LedgerError, match="sum to 2"):
        led.stake("c1", 5)
    assert dump(led.path) == before
    led.close()


def test_close_and_reopen_keeps_balances_and_keys(tmp_path):
    path = tmp_path / "l.db"
    led = Ledger(path)
    funded(led, available=50, staked=30, treasury=40)
    led.reward("c1", 10, key="reward/a1/c1")
    led.lock("c1", "a2")
    led.set_cooldown("c1", 4)
    snapshot = (led.balance("c1"), led.balance("treasury"), led.supply(), led.history("c1"))
    led.close()
    led = Ledger(path)
    assert (led.balance("c1"), led.balance("treasury"), led.supply(), led.history("c1")) == snapshot
    assert led.locks("c1") == ["a2"] and led.standing("c1") == Standing(4, False)
    led.reward("c1", 10, key="reward/a1/c1")  # a restarted coordinator repeats the reveal
    assert led.balance("c1") == Balance(60, 30)
    led.close()


def test_a_killed_process_keeps_every_committed_entry(tmp_path):
    path = tmp_path / "l.db"
    script = textwrap.dedent("""
        import os, signal, sys
        from pathlib import Path
        from sda.ledger import Ledger
        led = Ledger(Path(sys.argv[1]))
        led.mint("c1", 100)
        led.stake("c1", 30)
        led.mint("treasury", 50)
        led.reward("c1", 7, "r", key="reward/a1/c1")
        print("committed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == "committed"
    led = Ledger(path)
    assert led.balance("c1") == Balance(77, 30)
    assert led.balance("treasury") == Balance(43, 0)
    assert led.supply() == 150 and led.total() == 0
    led.reward("c1", 7, "r", key="reward/a1/c1")
    assert led.balance("c1") == Balance(77, 30)
    led.close()


# --- random operation sequences ------------------------------------------------------------

PARTIES = ("c1", "c2", "c3")
AGGS = ("a1", "a2")
parties = st.sampled_from(PARTIES)
aggs = st.sampled_from(AGGS)


class LedgerMachine(RuleBasedStateMachine):
    """Random mint/stake/unstake/lock/unlock/reward/slash/reopen against a model of the books."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="sda-ledger-")
        self.path = Path(self.dir) / "ledger.db"
        self.ledger = Ledger(self.path)
        self.reader = sqlite3.connect(str(self.path))
        self.available = dict.fromkeys((*PARTIES, "treasury", "burn"), 0)
        self.staked = dict.fromkeys(PARTIES, 0)
        self.supply = 0
        self.locked: set[tuple[str, str]] = set()
        self.keyed: dict[str, Entry] = {}
        self.last_keyed: tuple[str, tuple] | None = None

    def teardown(self):
        self.reader.close()
        self.ledger.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def refused(self, call, *args, match: str) -> None:
        before = dump(self.path)
        with pytest.raises(LedgerError, match=match):
            call(*args)
        assert dump(self.path) == before

    def repeat(self, call, key: str, *args) -> None:
        before = dump(self.path)
        assert call(*args, key=key) == self.keyed[key]
        assert dump(self.path) == before

    @initialize(stakes=st.lists(st.integers(0, 600), min_size=len(PARTIES), max_size=len(PARTIES)),
                treasury=st.integers(0, 500))
    def start(self, stakes, treasury):
        """Most examples start with stakes and a funded treasury, so slashes and rewards move tokens."""
        for party, amount in zip(PARTIES, stakes, strict=True):
            if amount:
                self.ledger.mint(party, amount)
                self.ledger.stake(party, amount)
                self.staked[party] += amount
                self.supply += amount
        if treasury:
            self.fund_treasury(treasury)

    # rules

    @rule(party=parties, amount=st.integers(1, 1000))
    def mint(self, party, amount):
        e = self.ledger.mint(party, amount)
        assert e.postings == (("mint", "issued", -amount), (party, "available", amount))
        self.available[party] += amount
        self.supply += amount

    @rule(amount=st.integers(1, 500))
    def fund_treasury(self, amount):
        self.ledger.mint("treasury", amount, memo="fund")
        self.available["treasury"] += amount
        self.supply += amount

    @rule(party=parties, data=st.data())
    def stake(self, party, data):
        # mostly an affordable amount, so that later slashes and unstakes have a stake to act on
        amount = data.draw(st.integers(1, max(1, self.available[party])) | st.integers(1, 1200), label="amount")
        if amount > self.available[party]:
            self.refused(self.ledger.stake, party, amount, match="available")
            return
        self.ledger.stake(party, amount)
        self.available[party] -= amount
        self.staked[party] += amount

    @rule(party=parties, amount=st.integers(1, 1200))
    def unstake(self, party, amount):
        if any(p == party for p, _ in self.locked):
            self.refused(self.ledger.unstake, party, amount, match="locked")
        elif amount > self.staked[party]:
            self.refused(self.ledger.unstake, party, amount, match="staked")
        else:
            self.ledger.unstake(party, amount)
            self.staked[party] -= amount
            self.available[party] += amount

    @precondition(lambda self: self.locked)
    @rule(data=st.data(), amount=st.integers(1, 1200))
    def unstake_locked(self, data, amount):
        party = data.draw(st.sampled_from(sorted({p for p, _ in self.locked})))
        self.refused(self.ledger.unstake, party, amount, match="locked")

    @rule(party=parties, agg=aggs)
    def lock(self, party, agg):
        assert self.ledger.lock(party, agg) == ((party, agg) not in self.locked)
        self.locked.add((party, agg))

    @rule(agg=aggs)
    def unlock_all(self, agg):
        gone = {x for x in self.locked if x[1] == agg}
        assert self.ledger.unlock_all(agg) == len(gone)
        self.locked -= gone

    @rule(party=parties, agg=aggs, amount=st.integers(1, 300))
    def reward(self, party, agg, amount):
        key = f"reward/{agg}/{party}"
        if key in self.keyed:
            self.repeat(lambda *a, key: self.ledger.reward(*a, key=key), key, party, amount, "again")
            return
        if amount > self.available["treasury"]:
            self.refused(self.ledger.reward, party, amount, "r", key, match="treasury")
            return
        self.keyed[key] = self.ledger.reward(party, amount, f"reward {agg}", key=key)
        self.last_keyed = ("reward", (party, amount, f"reward {agg}"))
        self.available["treasury"] -= amount
        self.available[party] += amount

    @rule(party=parties, agg=aggs, fraction=st.floats(0, 1) | st.sampled_from([0.1, 0.25, 0.37, 0.5, 0.9]))
    def slash(self, party, agg, fraction):
        key = f"slash/{agg}/{party}"
        if key in self.keyed:
            self.repeat(lambda *a, key: self.ledger.slash(*a, key=key), key, party, fraction, "again")
            return
        amount = math.floor(self.staked[party] * Fraction(fraction))
        event("slash of a positive amount" if amount else "slash of 0")
        e = self.ledger.slash(party, fraction, f"slash {agg}", key=key)
        assert e.postings == ((party, "staked", -amount), ("burn", "available", amount))
        self.keyed[key] = e
        self.last_keyed = ("slash", (party, fraction, f"slash {agg}"))
        self.staked[party] -= amount
        self.available["burn"] += amount

    @precondition(lambda self: self.last_keyed is not None)
    @rule()
    def repeat_last_keyed(self):
        kind, args = self.last_keyed
        key = f"{kind}/{args[2].split()[1]}/{args[0]}"
        self.repeat(getattr(self.ledger, kind), key, *args)

    @rule(party=parties, amount=st.integers(-3, 0))
    def bad_amount(self, party, amount):
        self.refused(self.ledger.stake, party, amount, match="amount")

    @rule()
    def reopen(self):
        self.ledger.close()
        self.ledger = Ledger(self.path)

    # invariants

    @invariant()
    def supply_changes_only_by_mint(self):
        assert self.ledger.supply() == self.supply

    @invariant()
    def books_sum_to_zero(self):
        assert self.ledger.total() == 0
        assert self.reader.execute("SELECT COALESCE(SUM(amount), 0) FROM postings").fetchone()[0] == 0

    @invariant()
    def every_entry_balances(self):
        rows = self.reader.execute(
            "SELECT e.entry_id, COUNT(p.entry_id), COALESCE(SUM(p.amount), 0) FROM entries e "
            "LEFT JOIN postings p ON p.entry_id = e.entry_id GROUP BY e.entry_id").fetchall()
        assert all(count >= 2 and total == 0 for _, count, total in rows), rows

    @invariant()
    def no_negative_ordinary_book(self):
        negative = self.reader.execute(
            "SELECT party_id, book, SUM(amount) FROM postings WHERE party_id != 'mint' "
            "GROUP BY party_id, book HAVING SUM(amount) < 0").fetchall()
        assert negative == []

    @invariant()
    def books_match_the_model(self):
        for party in (*PARTIES, "treasury", "burn"):
            assert self.ledger.balance(party) == Balance(self.available[party], self.staked.get(party, 0)), party
        assert self.ledger.stakes() == {p: s for p, s in self.staked.items() if s > 0}
        for party in PARTIES:
            assert self.ledger.locks(party) == sorted(a for p, a in self.locked if p == party)


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=50, stateful_step_count=30, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


def test_errors_are_sda_errors():
    assert issubclass(LedgerError, SdaError)

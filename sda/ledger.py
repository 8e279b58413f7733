"""The coordinator's token ledger (DESIGN §5): double-entry, in its own SQLite file.

An *account* is a (party_id, book) pair; a party's books are "available" and "staked". Three
system parties hold the rest: "mint" (its "issued" book is minus the supply, the only book that
may go negative), "treasury" (its "available" book funds rewards) and "burn" (its "available"
book receives slashes). An *entry* is one operation; its *postings* move integer token units
between accounts and always sum to zero, so `total()` is always 0 and the supply changes only
by `mint`. Balances are sums of postings; nothing else stores money.

Every operation is one IMMEDIATE transaction (WAL, synchronous=FULL: a committed entry survives
power loss) and takes an optional idempotency `key`: a second call with the same key returns the
first entry and changes nothing, so a coordinator that restarts mid-reveal never pays twice.

Each entry is shown to a party as a `Receipt` the coordinator signs (`seal(receipt, coordinator_id,
identity)`) and the party checks with `verify_receipt`.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

from .errors import MessageError, SdaError
from .protocol import codec as c
from .protocol.messages import Message, open_signed
from .sqlite import LockedDatabase, open_versioned

MINT = "mint"
TREASURY = "treasury"
BURN = "burn"
SYSTEM_PARTIES = frozenset({MINT, TREASURY, BURN})

AVAILABLE = "available"
STAKED = "staked"
ISSUED = "issued"

KINDS = ("mint", "stake", "unstake", "reward", "slash")
MEMO_MAX = 200
KEY_MAX = 200
#: Most tokens that may ever be issued: every balance and every sum then fits SQLite's int64.
MAX_SUPPLY = 2**62
_INT64 = (-(2**63), 2**63 - 1)
_TIME_MAX = 2.0**40
SCHEMA_VERSION = "1"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    entry_id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ({", ".join(f"'{k}'" for k in KINDS)})),
    memo TEXT NOT NULL,
    key TEXT UNIQUE NULL
);
CREATE TABLE IF NOT EXISTS postings (
    entry_id INTEGER NOT NULL REFERENCES entries(entry_id),
    party_id TEXT NOT NULL,
    book TEXT NOT NULL CHECK (book IN ('{AVAILABLE}', '{STAKED}', '{ISSUED}')),
    amount INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS postings_by_entry ON postings (entry_id);
CREATE INDEX IF NOT EXISTS postings_by_account ON postings (party_id, book);
CREATE TABLE IF NOT EXISTS locks (
    party_id TEXT NOT NULL,
    aggregation_id TEXT NOT NULL,
    PRIMARY KEY (party_id, aggregation_id)
);
CREATE INDEX IF NOT EXISTS locks_by_aggregation ON locks (aggregation_id);
CREATE TABLE IF NOT EXISTS standing (
    party_id TEXT PRIMARY KEY,
    cooldown_until INTEGER NOT NULL DEFAULT 0,
    excluded INTEGER NOT NULL DEFAULT 0 CHECK (excluded IN (0, 1))
);
"""


class LedgerError(SdaError):
    """The ledger refused an operation: bad arguments, insufficient funds, a locked stake."""


Posting = tuple[str, str, int]


@dataclass(frozen=True)
class Entry:
    """One committed operation and its postings (party_id, book, amount), in posting order."""

    entry_id: int
    time: float
    kind: str
    memo: str
    postings: tuple[Posting, ...]

    def encode(self) -> bytes:
        """Canonical bytes: msgpack of [entry_id, time, kind, memo, [[party, book, amount]...]]."""
        return c.pack([self.entry_id, self.time, self.kind, self.memo, [list(p) for p in self.postings]])

    def digest(self) -> bytes:
        """SHA-256 of `encode()`: what a receipt binds to."""
        return hashlib.sha256(b"sda/v1/ledger-entry\x00" + self.encode()).digest()

    def change(self, party_id: str, book: str) -> int:
        """Net change of one account in this entry."""
        return sum(a for p, b, a in self.postings if p == party_id and b == book)

    def touches(self, party_id: str) -> bool:
        """Whether any posting is on this party."""
        return any(p == party_id for p, _, _ in self.postings)


@dataclass(frozen=True)
class Balance:
    """A party's two books."""

    available: int
    staked: int


@dataclass(frozen=True)
class Standing:
    """A party's penalties: no committee before round `cooldown_until`; never if excluded."""

    cooldown_until: int
    excluded: bool


# --- receipts -----------------------------------------------------------------------------


def _memo(where: str, v: Any) -> str:
    if not isinstance(v, str):
        raise MessageError(f"{where}: expected a str, got {type(v).__name__}")
    if len(v) > MEMO_MAX:
        raise MessageError(f"{where}: expected at most {MEMO_MAX} characters, got {len(v)}")
    return v


@dataclass(frozen=True)
class Receipt(Message):
    """What one ledger entry did to one party, signed by the coordinator.

    amount_*: the signed change of the party's book in this entry; *_after: the book right after
    it (entries apply in entry_id order); entry_digest: `Entry.digest()` of the whole entry.
    """

    TYPE: ClassVar[str] = "receipt"
    party_id: str
    entry_id: int
    kind: str
    memo: str
    amount_available: int
    amount_staked: int
    available_after: int
    staked_after: int
    time: float
    entry_digest: bytes

    SCHEMA: ClassVar[dict[str, c.Validator]] = {
        "party_id": c.ident(),
        "entry_id": c.integer(1, _INT64[1]),
        "kind": c.choice(*KINDS),
        "memo": _memo,
        "amount_available": c.integer(*_INT64),
        "amount_staked": c.integer(*_INT64),
        "available_after": c.integer(*_INT64),
        "staked_after": c.integer(*_INT64),
        "time": c.number(0, _TIME_MAX),
        "entry_digest": c.blob(exact=32),
    }


def verify_receipt(raw_envelope: bytes, coordinator_id: str, coordinator_sign_key: bytes,
                   party_id: str | None = None) -> Receipt:
    """Open a sealed receipt signed by `coordinator_id`; optionally check it is for `party_id`.

    Raises MessageError (malformed), UnknownSender (another signer), BadSignature, or LedgerError
    (a valid receipt for another party).
    """
    receipt, _ = open_signed(raw_envelope, Receipt,
                             lambda signer: coordinator_sign_key if signer == coordinator_id else None)
    if party_id is not None and receipt.party_id != party_id:
        raise LedgerError(f"receipt {receipt.entry_id} is for {receipt.party_id!r}, not {party_id!r}")
    return receipt


# --- the ledger ---------------------------------------------------------------------------


class Ledger(LockedDatabase):
    """The double-entry token ledger in SQLite. Safe to share between threads (one lock)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._db = open_versioned(self.path, SCHEMA, SCHEMA_VERSION, "ledger")

    def close(self) -> None:
        """Close the database (every committed entry is already on disk)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---

    @staticmethod
    def _book(db: sqlite3.Connection, party_id: str, book: str) -> int:
        row = db.execute("SELECT COALESCE(SUM(amount), 0) FROM postings WHERE party_id=? AND book=?",
                         (party_id, book)).fetchone()
        return int(row[0])

    @staticmethod
    def _by_key(db: sqlite3.Connection, key: str | None, kind: str, party_id: str) -> Entry | None:
        """The entry already recorded under `key`, if any (checked to be the same operation)."""
        if key is None:
            return None
        row = db.execute("SELECT entry_id FROM entries WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        entry = _load(db, [row[0]])[0]
        if entry.kind != kind or not entry.touches(party_id):
            raise LedgerError(
                f"key {key!r} already names entry {entry.entry_id} ({entry.kind} touching "
                f"{sorted({p for p, _, _ in entry.postings})}), not a {kind} for {party_id!r}"
            )
        return entry

    def _post(self, db: sqlite3.Connection, entry_id: int, party_id: str, book: str, amount: int) -> None:
        """Insert one posting (a separate method so tests can make a transaction fail halfway)."""
        db.execute("INSERT INTO postings (entry_id, party_id, book, amount) VALUES (?, ?, ?, ?)",
                   (entry_id, party_id, book, amount))

    def _record(self, db: sqlite3.Connection, kind: str, memo: str, key: str | None,
                postings: Iterable[Posting]) -> Entry:
        """Insert an entry and its postings, then check, before the commit, that they sum to zero
        (read back from the database) and that no non-system book went negative."""
        postings = tuple(postings)
        now = float(self._clock())
        cur = db.execute("INSERT INTO entries (time, kind, memo, key) VALUES (?, ?, ?, ?)", (now, kind, memo, key))
        entry_id = int(cur.lastrowid)  # type: ignore[arg-type]
        for party_id, book, amount in postings:
            self._post(db, entry_id, party_id, book, amount)
        total, count = db.execute("SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM postings WHERE entry_id=?",
                                  (entry_id,)).fetchone()
        if total != 0 or count != len(postings):
            raise LedgerError(f"internal error: {kind} entry {entry_id} postings sum to {total} over {count} "
                              f"rows, not 0 over {len(postings)}; rolled back")
        for party_id, book, _ in postings:
            if party_id != MINT and (after := self._book(db, party_id, book)) < 0:
                raise LedgerError(f"internal error: {kind} would leave {party_id}:{book} at {after}; rolled back")
        return Entry(entry_id, now, kind, memo, postings)

    # --- operations ---

    def mint(self, party: str, amount: int, memo: str = "", key: str | None = None) -> Entry:
        """Issue `amount` new tokens to party:available (mint:issued -amount). Minting to
        "treasury" is how rewards are funded."""
        _check_party(party, allow={TREASURY})
        _check_amount("mint", party, amount)
        _check_text(memo, key)
        with self._tx() as db:
            if (done := self._by_key(db, key, "mint", party)) is not None:
                return done
            supply = -self._book(db, MINT, ISSUED)
            if supply + amount > MAX_SUPPLY:
                raise LedgerError(f"cannot mint {amount} to {party!r}: the supply {supply} would pass {MAX_SUPPLY}")
            return self._record(db, "mint", memo, key, [(MINT, ISSUED, -amount), (party, AVAILABLE, amount)])

    def stake(self, party: str, amount: int, key: str | None = None) -> Entry:
        """Move `amount` from party:available to party:staked."""
        _check_party(party)
        _check_amount("stake", party, amount)
        _check_text("", key)
        with self._tx() as db:
            if (done := self._by_key(db, key, "stake", party)) is not None:
                return done
            available = self._book(db, party, AVAILABLE)
            if available < amount:
                raise LedgerError(f"{party!r} cannot stake {amount}: only {available} available")
            return self._record(db, "stake", "", key, [(party, AVAILABLE, -amount), (party, STAKED, amount)])

    def unstake(self, party: str, amount: int, key: str | None = None) -> Entry:
        """Move `amount` from party:staked back to party:available; refused while the party is
        locked on any aggregation's committee."""
        _check_party(party)
        _check_amount("unstake", party, amount)
        _check_text("", key)
        with self._tx() as db:
            if (done := self._by_key(db, key, "unstake", party)) is not None:
                return done
            locked = [r[0] for r in db.execute(
                "SELECT aggregation_id FROM locks WHERE party_id=? ORDER BY aggregation_id", (party,))]
            if locked:
                raise LedgerError(f"{party!r} cannot unstake {amount}: its stake is locked by "
                                  f"aggregation(s) {locked}")
            staked = self._book(db, party, STAKED)
            if staked < amount:
                raise LedgerError(f"{party!r} cannot unstake {amount}: only {staked} staked")
            return self._record(db, "unstake", "", key, [(party, STAKED, -amount), (party, AVAILABLE, amount)])

    def reward(self, party: str, amount: int, memo: str = "", key: str | None = None) -> Entry:
        """Pay `amount` from treasury:available to party:available (e.g. key
        f"reward/{aggregation_id}/{clerk_id}")."""
        _check_party(party)
        _check_amount("reward", party, amount)
        _check_text(memo, key)
        with self._tx() as db:
            if (done := self._by_key(db, key, "reward", party)) is not None:
                return done
            funds = self._book(db, TREASURY, AVAILABLE)
            if funds < amount:
                raise LedgerError(f"cannot reward {party!r} with {amount}: the treasury holds only {funds}"
                                  f" (mint to {TREASURY!r} to fund it)")
            return self._record(db, "reward", memo, key, [(TREASURY, AVAILABLE, -amount), (party, AVAILABLE, amount)])

    def slash(self, party: str, fraction: float, memo: str = "", key: str | None = None) -> Entry:
        """Move floor(staked * fraction) from party:staked to burn:available, fraction in [0, 1].

        The floor is exact (the float's exact binary value times the stake). A slash of 0 tokens
        (nothing staked, or fraction 0) is still recorded, so the penalty shows in the history.
        """
        _check_party(party)
        if (not isinstance(fraction, int | float) or isinstance(fraction, bool) or not math.isfinite(fraction)
                or not 0 <= fraction <= 1):
            raise LedgerError(f"cannot slash {party!r}: fraction must be a number in [0, 1], got {fraction!r:.40}")
        _check_text(memo, key)
        with self._tx() as db:
            if (done := self._by_key(db, key, "slash", party)) is not None:
                return done
            staked = self._book(db, party, STAKED)
            amount = math.floor(staked * Fraction(fraction))
            return self._record(db, "slash", memo, key, [(party, STAKED, -amount), (BURN, AVAILABLE, amount)])

    # --- committee locks and standing (not entries) ---

    def lock(self, party: str, aggregation_id: str) -> bool:
        """Lock the party's stake for an aggregation it serves on; False if already locked."""
        _check_party(party)
        _check_id("aggregation_id", aggregation_id)
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO locks (party_id, aggregation_id) VALUES (?, ?)",
                             (party, aggregation_id))
            return cur.rowcount == 1

    def unlock_all(self, aggregation_id: str) -> int:
        """Release every lock of an aggregation (it finished or failed); how many were released."""
        _check_id("aggregation_id", aggregation_id)
        with self._tx() as db:
            return db.execute("DELETE FROM locks WHERE aggregation_id=?", (aggregation_id,)).rowcount

    def locks(self, party: str) -> list[str]:
        """The aggregations holding the party's stake, sorted."""
        return [r[0] for r in self._q("SELECT aggregation_id FROM locks WHERE party_id=? ORDER BY aggregation_id",
                                      (party,))]

    def set_cooldown(self, party: str, until_round: int) -> None:
        """The party may not serve before round `until_round` (replaces any earlier cool-down)."""
        _check_party(party)
        if not isinstance(until_round, int) or isinstance(until_round, bool) or not 0 <= until_round <= _INT64[1]:
            raise LedgerError(f"cool-down of {party!r}: until_round must be an int >= 0, got {until_round!r:.40}")
        with self._tx() as db:
            db.execute("INSERT INTO standing (party_id, cooldown_until) VALUES (?, ?) "
                       "ON CONFLICT (party_id) DO UPDATE SET cooldown_until=excluded.cooldown_until",
                       (party, until_round))

    def exclude(self, party: str) -> None:
        """The party may never serve again (a wrong result)."""
        _check_party(party)
        with self._tx() as db:
            db.execute("INSERT INTO standing (party_id, excluded) VALUES (?, 1) "
                       "ON CONFLICT (party_id) DO UPDATE SET excluded=1", (party,))

    def standing(self, party: str) -> Standing:
        """The party's cool-down and exclusion (Standing(0, False) if never penalised)."""
        rows = self._q("SELECT cooldown_until, excluded FROM standing WHERE party_id=?", (party,))
        return Standing(int(rows[0][0]), bool(rows[0][1])) if rows else Standing(0, False)

    def eligible(self, party: str, round_number: int) -> bool:
        """Whether the party may serve in `round_number`: not excluded and out of cool-down."""
        s = self.standing(party)
        return not s.excluded and round_number >= s.cooldown_until

    # --- queries ---

    def balance(self, party: str) -> Balance:
        """The party's available and staked books."""
        rows = dict(self._q("SELECT book, SUM(amount) FROM postings WHERE party_id=? GROUP BY book", (party,)))
        return Balance(int(rows.get(AVAILABLE, 0)), int(rows.get(STAKED, 0)))

    def history(self, party: str, limit: int = 100) -> list[Entry]:
        """The newest `limit` entries touching the party, newest first."""
        with self._lock:
            ids = [r[0] for r in self._db.execute(
                "SELECT DISTINCT entry_id FROM postings WHERE party_id=? ORDER BY entry_id DESC LIMIT ?",
                (party, int(limit)))]
            return _load(self._db, ids)

    def entry(self, entry_id: int) -> Entry | None:
        """One entry by id."""
        with self._lock:
            found = _load(self._db, [entry_id])
        return found[0] if found else None

    def supply(self) -> int:
        """Tokens issued so far (= -mint:issued)."""
        return -int(self._q("SELECT COALESCE(SUM(amount), 0) FROM postings WHERE party_id=? AND book=?",
                            (MINT, ISSUED))[0][0])

    def stakes(self) -> dict[str, int]:
        """party -> staked, for every party with a positive stake."""
        rows = self._q("SELECT party_id, SUM(amount) FROM postings WHERE book=? GROUP BY party_id "
                       "HAVING SUM(amount) > 0 ORDER BY party_id", (STAKED,))
        return {p: int(a) for p, a in rows}

    def total(self) -> int:
        """Sum of every posting: 0 in a consistent ledger."""
        return int(self._q("SELECT COALESCE(SUM(amount), 0) FROM postings")[0][0])

    def receipt_for(self, entry: Entry, party: str) -> Receipt:
        """The receipt of `entry` for one party it touches, with the party's books right after it."""
        if not entry.touches(party):
            raise LedgerError(f"entry {entry.entry_id} ({entry.kind}) does not touch {party!r}")
        with self._lock:
            stored = _load(self._db, [entry.entry_id])
            if not stored or stored[0] != entry:
                raise LedgerError(f"entry {entry.entry_id} is not in this ledger as given")
            after = dict(self._db.execute(
                "SELECT book, SUM(amount) FROM postings WHERE party_id=? AND entry_id<=? GROUP BY book",
                (party, entry.entry_id)).fetchall())
        return Receipt(
            party_id=party, entry_id=entry.entry_id, kind=entry.kind, memo=entry.memo,
            amount_available=entry.change(party, AVAILABLE), amount_staked=entry.change(party, STAKED),
            available_after=int(after.get(AVAILABLE, 0)), staked_after=int(after.get(STAKED, 0)),
            time=entry.time, entry_digest=entry.digest(),
        )


def _load(db: sqlite3.Connection, ids: list[int]) -> list[Entry]:
    """Entries by id, in the order given (missing ids are skipped)."""
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    heads = {r[0]: r for r in db.execute(f"SELECT entry_id, time, kind, memo FROM entries WHERE entry_id IN ({marks})",
                                         ids)}
    postings: dict[int, list[Posting]] = {i: [] for i in heads}
    for eid, party_id, book, amount in db.execute(
            f"SELECT entry_id, party_id, book, amount FROM postings WHERE entry_id IN ({marks}) ORDER BY rowid", ids):
        postings[eid].append((party_id, book, int(amount)))
    return [Entry(int(h[0]), float(h[1]), h[2], h[3], tuple(postings[h[0]])) for i in ids if (h := heads.get(i))]


def _check_id(what: str, value: Any) -> None:
    try:
        c.ident()(what, value)
    except MessageError as exc:
        raise LedgerError(str(exc)) from None


def _check_party(party: Any, allow: frozenset[str] | set[str] = frozenset()) -> None:
    _check_id("party", party)
    if party in SYSTEM_PARTIES and party not in allow:
        raise LedgerError(f"{party!r} is a system account; this operation is for ordinary parties")


def _check_amount(op: str, party: str, amount: Any) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise LedgerError(f"cannot {op} for {party!r}: amount must be an int, got {type(amount).__name__}")
    if not 0 < amount <= MAX_SUPPLY:
        raise LedgerError(f"cannot {op} {amount} for {party!r}: amount must be in 1..{MAX_SUPPLY}")


def _check_text(memo: Any, key: Any) -> None:
    if not isinstance(memo, str) or len(memo) > MEMO_MAX:
        raise LedgerError(f"memo must be a str of at most {MEMO_MAX} characters, got {memo!r:.60}")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= KEY_MAX):
        raise LedgerError(f"key must be None or a str of 1..{KEY_MAX} characters, got {key!r:.60}")

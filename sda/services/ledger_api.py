"""Ledger requests over MQTT: a party asks the coordinator for its balance or history, or to
stake or unstake; the answer comes back to its inbox, signed by the coordinator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import MessageError
from ..protocol import codec as c
from ..protocol.messages import Message


def _receipts(where: str, v: Any) -> tuple[bytes, ...]:
    if not isinstance(v, list) or len(v) > 100:
        raise MessageError(f"{where}: expected at most 100 receipts")
    return tuple(c.blob(max_len=4096)(f"{where}[{i}]", x) for i, x in enumerate(v))


@dataclass(frozen=True)
class LedgerRequest(Message):
    """A party's signed request: op in balance, history, stake, unstake."""

    TYPE: ClassVar[str] = "ledger_request"
    party_id: str
    request_id: str
    op: str
    amount: int

    SCHEMA: ClassVar[dict[str, c.Validator]] = {
        "party_id": c.ident(),
        "request_id": c.ident(),
        "op": c.choice("balance", "history", "stake", "unstake"),
        "amount": c.integer(0, 2**62),
    }


@dataclass(frozen=True)
class LedgerResponse(Message):
    """The coordinator's answer: balances after the request, and signed receipts (history, or
    the entry a stake/unstake made)."""

    TYPE: ClassVar[str] = "ledger_response"
    party_id: str
    request_id: str
    ok: bool
    error: str
    available: int
    staked: int
    receipts: tuple[bytes, ...]

    SCHEMA: ClassVar[dict[str, c.Validator]] = {
        "party_id": c.ident(),
        "request_id": c.ident(),
        "ok": lambda where, v: v if isinstance(v, bool) else (_ for _ in ()).throw(
            MessageError(f"{where}: expected a bool")),
        "error": lambda where, v: v if isinstance(v, str) and len(v) <= 500 else (_ for _ in ()).throw(
            MessageError(f"{where}: expected a str of at most 500 characters")),
        "available": c.integer(-(2**62), 2**62),
        "staked": c.integer(-(2**62), 2**62),
        "receipts": _receipts,
    }

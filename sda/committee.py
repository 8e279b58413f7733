"""Verifiable clerk committees (DESIGN §5): a draw weighted by log(1 + stake) that anyone holding
the clerk snapshot can recompute.

Efraimidis and Spirakis ("Weighted random sampling with a reservoir", IPL 97(5), 2006): give each
eligible clerk c the key u_c^(1/w_c) with w_c = log(1 + stake_c) and u_c uniform in (0, 1); the n
largest keys are a weighted sample without replacement. Here u_c comes from
SHA-256(snapshot_hash || aggregation_id || clerk_id), so the draw is deterministic given the
snapshot, yet no one can steer it without changing the snapshot (which every announce names).
We rank by log(u_c) / w_c, the logarithm of the key, which keeps the order and avoids underflow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ProtocolError
from .protocol import codec


class CommitteeError(ProtocolError):
    """An announce whose committee is not the verifiable draw from its clerk snapshot."""


@dataclass(frozen=True)
class Candidate:
    """A registered clerk as the snapshot sees it: keys, stake, and whether it may be drawn
    (not in cool-down, not excluded)."""

    clerk_id: str
    sign_key: bytes
    box_key: bytes
    stake: int
    eligible: bool = True


def snapshot_hash(candidates: Sequence[Candidate]) -> bytes:
    """SHA-256 over every candidate, in clerk_id order (the order the snapshot is kept in)."""
    h = hashlib.sha256(b"sda/v1/clerks\x00")
    for c in sorted(candidates, key=lambda c: c.clerk_id):
        h.update(codec.pack([c.clerk_id, c.sign_key, c.box_key, c.stake, c.eligible]))
    return h.digest()


def uniforms(snap_hash: bytes, aggregation_id: str, clerk_ids: Sequence[str]) -> np.ndarray:
    """u_c in the open interval (0, 1) from SHA-256(snapshot || aggregation || clerk). (m,) float64."""
    prefix = hashlib.sha256(b"sda/v1/draw\x00" + snap_hash + aggregation_id.encode() + b"\x00")
    top = np.empty(len(clerk_ids), np.uint64)
    for i, cid in enumerate(clerk_ids):
        h = prefix.copy()
        h.update(cid.encode())
        top[i] = int.from_bytes(h.digest()[:8], "big")
    # (x + 0.5) / 2^64 never reaches 0 or 1; float64 keeps 53 bits, ample for ranking.
    return (top.astype(np.float64) + 0.5) / 2.0**64


def log_keys(snap_hash: bytes, aggregation_id: str, candidates: Sequence[Candidate]) -> np.ndarray:
    """log(u_c) / log(1 + stake_c) for each candidate; -inf for one that may not be drawn. (m,)"""
    stakes = np.array([c.stake for c in candidates], np.float64)
    ok = np.array([c.eligible and c.stake > 0 for c in candidates], bool)
    u = uniforms(snap_hash, aggregation_id, [c.clerk_id for c in candidates])
    keys = np.full(len(candidates), -np.inf)
    keys[ok] = np.log(u[ok]) / np.log1p(stakes[ok])
    return keys


def select(snap_hash: bytes, aggregation_id: str, candidates: Sequence[Candidate], n: int) -> list[Candidate]:
    """The committee: the n eligible candidates with the largest keys, best first.

    Ties (equal keys) break by clerk_id so every verifier gets the same order. CommitteeError if
    fewer than n candidates may be drawn.
    """
    keys = log_keys(snap_hash, aggregation_id, candidates)
    drawable = int(np.isfinite(keys).sum())
    if drawable < n:
        raise CommitteeError(f"only {drawable} clerks may be drawn (staked, not cooling down), need {n}")
    ids = np.array([c.clerk_id for c in candidates])
    order = np.lexsort((ids, -keys))[:n]
    return [candidates[int(i)] for i in order]


def verify(announce, candidates: Sequence[Candidate]) -> None:
    """Raise CommitteeError unless the announce's committee is exactly the draw from `candidates`.

    Checks the snapshot hash the announce names, the clerks and their order, their keys, their
    evaluation points (1..n in draw order), and that none is in cool-down or excluded.
    """
    if snapshot_hash(candidates) != announce.clerks_hash:
        raise CommitteeError(f"{announce.aggregation_id}: clerk snapshot does not match the announce's hash")
    by_id = {c.clerk_id: c for c in candidates}
    for m in announce.committee:
        c = by_id.get(m.clerk_id)
        if c is None:
            raise CommitteeError(f"{announce.aggregation_id}: {m.clerk_id} is not in the clerk snapshot")
        if not c.eligible:
            raise CommitteeError(f"{announce.aggregation_id}: {m.clerk_id} is in cool-down or excluded")
        if (m.sign_key, m.box_key) != (c.sign_key, c.box_key):
            raise CommitteeError(f"{announce.aggregation_id}: keys of {m.clerk_id} differ from the snapshot")
    drawn = select(announce.clerks_hash, announce.aggregation_id, candidates, len(announce.committee))
    if [c.clerk_id for c in drawn] != [m.clerk_id for m in announce.committee]:
        raise CommitteeError(f"{announce.aggregation_id}: the committee is not the draw from the snapshot")
    if [m.point for m in announce.committee] != list(range(1, len(announce.committee) + 1)):
        raise CommitteeError(f"{announce.aggregation_id}: evaluation points must be 1..n in draw order")

"""The topic map of DESIGN §6, in one place.

Every topic lives under `sda/v1/`. Each is written by exactly one party, enforced by the
broker's ACL on the authenticated username (`%u`): see `acl_lines` and systemd/mosquitto/.
Ids are restricted (`[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`), so they never contain `/`, `+` or `#`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "sda/v1"
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_ID_RE = re.compile(_ID)


def _check(*ids: str) -> None:
    for i in ids:
        if not isinstance(i, str) or not _ID_RE.fullmatch(i):
            raise ValueError(f"not a valid id for a topic level: {i!r:.80}")


def announce(aggregation_id: str) -> str:
    """Coordinator, retained: the signed announce of an aggregation."""
    _check(aggregation_id)
    return f"{PREFIX}/agg/{aggregation_id}/announce"


def participation(aggregation_id: str, device_id: str) -> str:
    """That device: its participation in an aggregation."""
    _check(aggregation_id, device_id)
    return f"{PREFIX}/agg/{aggregation_id}/participation/{device_id}"


def job(clerk_id: str, aggregation_id: str) -> str:
    """Coordinator: a clerk's job for an aggregation."""
    _check(clerk_id, aggregation_id)
    return f"{PREFIX}/clerk/{clerk_id}/job/{aggregation_id}"


def result(aggregation_id: str, clerk_id: str) -> str:
    """That clerk: its result for an aggregation."""
    _check(aggregation_id, clerk_id)
    return f"{PREFIX}/agg/{aggregation_id}/result/{clerk_id}"


def registration(party_id: str) -> str:
    """That party (device or clerk), retained: its signed public keys."""
    _check(party_id)
    return f"{PREFIX}/registry/{party_id}"


def _page(name: str, page: int) -> str:
    if not isinstance(page, int) or page < 0:
        raise ValueError(f"page must be an int >= 0, got {page!r}")
    return f"{PREFIX}/{name}/{page}"


def registry_snapshot(page: int = 0) -> str:
    """Coordinator, retained: one signed page of the registry snapshot that bitmaps index into."""
    return _page("registry_snapshot", page)


def release(model_id: str) -> str:
    """Coordinator, retained, signed: a model release."""
    _check(model_id)
    return f"{PREFIX}/model/{model_id}/release"


def inbox(party_id: str) -> str:
    """Coordinator: messages to one party (receipts, notices)."""
    _check(party_id)
    return f"{PREFIX}/device/{party_id}/inbox"


# Subscriptions of each role.
ALL_ANNOUNCES = f"{PREFIX}/agg/+/announce"
ALL_PARTICIPATIONS = f"{PREFIX}/agg/+/participation/+"
ALL_RESULTS = f"{PREFIX}/agg/+/result/+"
ALL_REGISTRATIONS = f"{PREFIX}/registry/+"
ALL_REGISTRY_PAGES = f"{PREFIX}/registry_snapshot/+"
ALL_CLERK_PAGES = f"{PREFIX}/clerk_snapshot/+"


def clerk_snapshot(page: int = 0) -> str:
    """Coordinator, retained: one signed page of the clerk snapshot committees are drawn from."""
    return _page("clerk_snapshot", page)


def ledger_request(party_id: str) -> str:
    """That party: a signed request to the coordinator's ledger (balance, history, stake...)."""
    _check(party_id)
    return f"{PREFIX}/ledger/{party_id}/request"


ALL_LEDGER_REQUESTS = f"{PREFIX}/ledger/+/request"


def jobs_of(clerk_id: str) -> str:
    """A clerk's subscription to its jobs."""
    _check(clerk_id)
    return f"{PREFIX}/clerk/{clerk_id}/job/+"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT v5 shared subscription: one of the group's members gets each message."""
    _check(group)
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True)
class Parsed:
    """A topic read back: its kind and the ids in it."""

    kind: str
    aggregation_id: str | None = None
    party_id: str | None = None


_PATTERNS = [
    ("announce", re.compile(rf"{PREFIX}/agg/({_ID})/announce")),
    ("participation", re.compile(rf"{PREFIX}/agg/({_ID})/participation/({_ID})")),
    ("result", re.compile(rf"{PREFIX}/agg/({_ID})/result/({_ID})")),
    ("job", re.compile(rf"{PREFIX}/clerk/({_ID})/job/({_ID})")),
    ("registration", re.compile(rf"{PREFIX}/registry/({_ID})")),
    ("registry_snapshot", re.compile(rf"{PREFIX}/registry_snapshot/([0-9]{{1,6}})")),
    ("release", re.compile(rf"{PREFIX}/model/({_ID})/release")),
    ("clerk_snapshot", re.compile(rf"{PREFIX}/clerk_snapshot/([0-9]{{1,6}})")),
    ("ledger_request", re.compile(rf"{PREFIX}/ledger/({_ID})/request")),
    ("inbox", re.compile(rf"{PREFIX}/device/({_ID})/inbox")),
]


def parse(topic: str) -> Parsed | None:
    """The kind and ids of a topic of ours, or None for anything else."""
    for kind, rx in _PATTERNS:
        m = rx.fullmatch(topic)
        if not m:
            continue
        g = m.groups()
        if kind in ("announce",):
            return Parsed(kind, aggregation_id=g[0])
        if kind in ("participation", "result"):
            return Parsed(kind, aggregation_id=g[0], party_id=g[1])
        if kind == "job":
            return Parsed(kind, aggregation_id=g[1], party_id=g[0])
        if kind in ("registration", "inbox", "ledger_request"):
            return Parsed(kind, party_id=g[0])
        if kind == "release":
            return Parsed(kind, party_id=g[0])
        return Parsed(kind)
    return None


def acl_lines(coordinator_user: str = "coordinator") -> list[str]:
    """Mosquitto ACL lines: each party writes only its own topics (by authenticated %u)."""
    _check(coordinator_user)
    return [
        "# Generated by sda: every party writes only its own topics, by authenticated username.",
        f"user {coordinator_user}",
        f"topic readwrite {PREFIX}/#",
        "",
        "# Every other authenticated user (devices and clerks):",
        f"pattern read {PREFIX}/agg/+/announce",
        f"pattern write {PREFIX}/agg/+/participation/%u",
        f"pattern write {PREFIX}/agg/+/result/%u",
        f"pattern read {PREFIX}/clerk/%u/job/+",
        f"pattern readwrite {PREFIX}/registry/%u",
        f"pattern read {PREFIX}/registry_snapshot/+",
        f"pattern read {PREFIX}/clerk_snapshot/+",
        f"pattern write {PREFIX}/ledger/%u/request",
        f"pattern read {PREFIX}/model/+/release",
        f"pattern read {PREFIX}/device/%u/inbox",
        "",
    ]

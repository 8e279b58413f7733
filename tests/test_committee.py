"""The verifiable log-stake committee draw."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import chisquare

from sda import committee as C
from sda.protocol.messages import CommitteeMember


def candidates(stakes, eligible=None):
    eligible = eligible or [True] * len(stakes)
    return [C.Candidate(f"clerk{i}", os.urandom(32), os.urandom(32), s, e)
            for i, (s, e) in enumerate(zip(stakes, eligible, strict=True))]


def test_single_draw_frequencies_follow_log_stake_weights():
    # With n = 1, Efraimidis-Spirakis picks c with probability w_c / sum(w), w = log(1 + stake).
    stakes = [1, 3, 10, 30, 100, 1000, 10_000, 1_000_000]
    cands = candidates(stakes)
    h = C.snapshot_hash(cands)
    draws = 20_000
    counts = np.zeros(len(cands))
    for a in range(draws):
        counts[int(C.select(h, f"agg-{a}", cands, 1)[0].clerk_id[5:])] += 1
    w = np.log1p(stakes)
    assert chisquare(counts, draws * w / w.sum()).pvalue > 0.001
    # and the test has power: weights proportional to the stake itself are clearly rejected
    s = np.array(stakes, float)
    assert chisquare(counts, draws * s / s.sum()).pvalue < 1e-12


def test_selection_is_deterministic_and_depends_on_aggregation_and_snapshot():
    cands = candidates([5, 50, 500, 5000, 7, 70, 700, 7000, 9, 90])
    h = C.snapshot_hash(cands)
    one = [c.clerk_id for c in C.select(h, "a1", cands, 5)]
    assert one == [c.clerk_id for c in C.select(h, "a1", list(reversed(cands)), 5)]
    others = {tuple(c.clerk_id for c in C.select(h, f"a{i}", cands, 5)) for i in range(30)}
    assert len(others) > 5  # different aggregations, different committees
    h2 = C.snapshot_hash([replace(cands[0], stake=6), *cands[1:]])
    assert h2 != h


def test_ineligible_and_unstaked_clerks_are_never_drawn():
    cands = candidates([100] * 6 + [0], eligible=[True, False, True, True, False, True, True])
    h = C.snapshot_hash(cands)
    for a in range(200):
        drawn = {c.clerk_id for c in C.select(h, f"x{a}", cands, 4)}
        assert drawn == {"clerk0", "clerk2", "clerk3", "clerk5"}
    with pytest.raises(C.CommitteeError, match="only 4 clerks"):
        C.select(h, "y", cands, 5)


class _Announce:
    """The fields of an announce that verification reads."""

    def __init__(self, aggregation_id, clerks_hash, committee):
        self.aggregation_id, self.clerks_hash, self.committee = aggregation_id, clerks_hash, tuple(committee)


def _announce_for(cands, agg="agg", n=4):
    h = C.snapshot_hash(cands)
    drawn = C.select(h, agg, cands, n)
    return _Announce(agg, h, [CommitteeMember(c.clerk_id, c.sign_key, c.box_key, i + 1) for i, c in enumerate(drawn)])


def test_an_honest_committee_verifies_and_every_tampering_is_refused():
    cands = candidates([10, 20, 40, 80, 160, 320, 640, 1280])
    a = _announce_for(cands)
    C.verify(a, cands)
    spare = next(c for c in cands if c.clerk_id not in {m.clerk_id for m in a.committee})
    swapped = list(a.committee)
    swapped[0] = CommitteeMember(spare.clerk_id, spare.sign_key, spare.box_key, 1)
    reordered = [replace(m, point=i + 1) for i, m in enumerate(reversed(a.committee))]
    other_keys = [replace(a.committee[0], box_key=os.urandom(32)), *a.committee[1:]]
    bad_points = [replace(m, point=m.point + 1) for m in a.committee]
    for committee in (swapped, reordered, other_keys, bad_points):
        with pytest.raises(C.CommitteeError):
            C.verify(_Announce(a.aggregation_id, a.clerks_hash, committee), cands)
    with pytest.raises(C.CommitteeError, match="snapshot does not match"):
        C.verify(a, [replace(cands[0], stake=11), *cands[1:]])  # a snapshot with other stakes
    # a clerk in cool-down: the snapshot marks it ineligible, so a committee naming it is refused
    cooled = [replace(c, eligible=c.clerk_id != a.committee[0].clerk_id) for c in cands]
    forced = _Announce(a.aggregation_id, C.snapshot_hash(cooled), a.committee)
    with pytest.raises(C.CommitteeError, match="cool-down"):
        C.verify(forced, cooled)


def test_a_participant_refuses_an_announce_whose_committee_is_not_the_draw():
    import time as _time

    from sda import crypto
    from sda.protocol.participant import Participant, ParticipantPolicy
    from sda.protocol.registry import Registry, RegistryEntry
    from sda.protocol.server import new_announce

    ids = [crypto.Identity.generate() for _ in range(8)]
    cands = [C.Candidate(f"clerk{i}", d.public().sign_key, d.public().box_key, 10 * (i + 1)) for i, d in enumerate(ids)]
    h = C.snapshot_hash(cands)
    dev = crypto.Identity.generate()
    reg = Registry([RegistryEntry("dev", dev.public().sign_key, dev.public().box_key)])

    def announce(members):
        now = _time.time()
        return new_announce(aggregation_id="a1", coordinator_id="coordinator", k=2, t=1,
                            committee=tuple(CommitteeMember(c.clerk_id, c.sign_key, c.box_key, i + 1)
                                            for i, c in enumerate(members)),
                            recipient_key=dev.public().box_key, registry=reg, dimension=2, scale=1.0,
                            clip_lo=-1, clip_hi=1, participation_deadline=now + 60, result_deadline=now + 120,
                            min_participants=1, clerks_hash=h)

    drawn = C.select(h, "a1", cands, 4)
    check = lambda a: C.verify(a, cands)  # noqa: E731
    p = Participant("dev", dev, ParticipantPolicy(min_participants=1), committee_check=check)
    p.check(announce(drawn), _time.time())  # the honest draw is accepted
    others = [c for c in cands if c not in drawn]
    with pytest.raises(C.CommitteeError):
        Participant("dev", dev, ParticipantPolicy(min_participants=1), committee_check=check).participate(
            announce([*drawn[:3], others[0]]), np.zeros(2), _time.time())

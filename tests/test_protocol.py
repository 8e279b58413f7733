"""Tests of the sans-I/O protocol (DESIGN §3): parameter checks, participant, server, clerk,
recipient, driven with real identities and real signed messages."""

from __future__ import annotations

import functools
import math
import os
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_fixtures import (
    CLIP,
    COORDINATOR,
    NOW,
    PARTICIPATION_DEADLINE,
    RESULT_DEADLINE,
    SCALE,
    announce_kwargs,
    clerk_results,
    deterministic_bytes,
    fake_committee,
    fake_registry,
    full_round,
    identity,
    inputs,
    job,
    make_world,
    open_result,
    participate,
    participation,
    reseal_result,
)

from sda import crypto
from sda import field as F
from sda.errors import (
    AlreadyProcessed,
    BadSignature,
    DecryptionFailed,
    EncodingError,
    MessageError,
    ParameterError,
    ProtocolError,
    ReconstructionError,
    UnknownSender,
)
from sda.protocol.clerk import Clerk, result_info
from sda.protocol.codec import MAX_MESSAGE_BYTES
from sda.protocol.messages import (
    Announce,
    ClerkJob,
    ClerkResult,
    CommitteeMember,
    Envelope,
    Participation,
    seal,
)
from sda.protocol.params import check_announce, check_thresholds, fixed_point_of, open_announce
from sda.protocol.participant import Participant, ParticipantPolicy, seed_info
from sda.protocol.recipient import Recipient, safe_max_errors
from sda.protocol.registry import Registry
from sda.protocol.server import Server, new_announce
from sda.protocol.snapshot import bitmap_bytes, decode_bitmap, encode_bitmap, snapshot_hash

P = F.P_DEFAULT


# ===========================================================================================
# Parameters
# ===========================================================================================


def test_thresholds_sda_paper_small_set():
    # SDA paper's small setting: k = 10, t = 5, so r = 15 and 2r - t = 25.
    with pytest.raises(ParameterError, match="split-set"):
        check_thresholds(10, 5, 26)
    with pytest.raises(ParameterError, match="split-set"):
        check_thresholds(10, 5, 25)
    check_thresholds(10, 5, 24)
    check_thresholds(10, 5, 15)  # n = r: no dropout tolerance, still safe
    with pytest.raises(ParameterError, match="too small"):
        check_thresholds(10, 5, 14)


@pytest.mark.parametrize("k,t,n", [(5, 0, 6), (0, 2, 3), (5, -1, 6), (-1, 3, 3)])
def test_thresholds_refuse_non_positive_k_or_t(k, t, n):
    with pytest.raises(ParameterError):
        check_thresholds(k, t, n)


@settings(deadline=None, max_examples=300)
@given(k=st.integers(-2, 40), t=st.integers(-2, 20), n=st.integers(0, 120))
def test_thresholds_accept_exactly_the_split_set_safe_committees(k, t, n):
    r = k + t
    safe = k >= 1 and t >= 1 and r <= n < 2 * r - t
    try:
        check_thresholds(k, t, n)
        accepted = True
    except ParameterError:
        accepted = False
    assert accepted == safe
    if accepted:
        # Any two sets of r clerks out of n share at least 2r - n clerks: more than t.
        assert 2 * r - n > t


def base_announce(**over) -> Announce:
    reg = over.pop("registry", None) or fake_registry(30)
    committee = over.pop("committee", None) or fake_committee(10)
    return new_announce(**announce_kwargs(reg, committee, **over))


def test_a_valid_announce_is_built_and_checked():
    a = base_announce()
    scheme = check_announce(a)
    assert (scheme.p, scheme.k, scheme.t, scheme.n) == (P, 5, 2, 10)
    assert scheme.points == tuple(range(1, 11))
    assert a.max_participants == a.registry_size == 30


def test_announce_with_sda_small_set_committee():
    reg = fake_registry(30)
    with pytest.raises(ParameterError, match="split-set"):
        base_announce(registry=reg, committee=fake_committee(26), k=10, t=5)
    a = base_announce(registry=reg, committee=fake_committee(24), k=10, t=5)
    assert a.n == 24
    with pytest.raises(ParameterError, match="too small"):
        base_announce(registry=reg, committee=fake_committee(14), k=10, t=5)


def _largest_safe_n(max_abs: int, headroom: int = 0) -> int:
    return (P - 1 - 2 * headroom) // (2 * max_abs) if 2 * headroom < P else -1


def test_overflow_prone_max_participants_is_refused():
    """N_max * value_range + headroom < p / 2, exactly at the boundary."""
    reg = fake_registry(30)
    scale, clip = 2.0**20, 100.0
    max_abs = math.ceil(clip * scale) + 1
    n_ok = _largest_safe_n(max_abs)
    assert n_ok == 10
    assert 2 * n_ok * max_abs < P <= 2 * (n_ok + 1) * max_abs
    kw = dict(registry=reg, scale=scale, clip_lo=-clip, clip_hi=clip, min_participants=5)
    a = base_announce(max_participants=n_ok, **kw)
    assert a.max_participants == 10
    with pytest.raises(ParameterError, match="overflow"):
        base_announce(max_participants=n_ok + 1, **kw)
    with pytest.raises(ParameterError, match="overflow"):
        base_announce(**kw)  # max_participants defaults to the registry size, 30
    # The clip is symmetric in effect: a large negative bound alone overflows too.
    with pytest.raises(ParameterError, match="overflow"):
        base_announce(registry=reg, scale=scale, clip_lo=-clip, clip_hi=0.0, min_participants=5)


def test_noise_headroom_counts_towards_overflow():
    reg = fake_registry(30)
    scale, clip = 2.0**20, 100.0
    max_abs = math.ceil(clip * scale) + 1
    n = 10
    headroom = (P - 1) // 2 - n * max_abs  # largest with 2 * (n * max_abs + h) < p
    kw = dict(registry=reg, scale=scale, clip_lo=-clip, clip_hi=clip, max_participants=n,
              noise_mechanism="skellam", noise_added_by="clerks", noise_sigma=1.0)
    assert base_announce(noise_headroom=headroom, **kw).noise_headroom == headroom
    with pytest.raises(ParameterError, match="overflow"):
        base_announce(noise_headroom=headroom + 1, **kw)


def test_default_fixed_point_allows_about_16k_participants():
    """With scale 2^16 and clip 1 (the simulation's defaults) N_max must stay below 16384."""
    reg = fake_registry(16384)
    kw = dict(registry=reg, scale=2.0**16, clip_lo=-1.0, clip_hi=1.0)
    assert _largest_safe_n(65537) == 16383
    base_announce(max_participants=16383, **kw)
    with pytest.raises(ParameterError, match="overflow"):
        base_announce(max_participants=16384, **kw)


def test_small_prime_refuses_overflow():
    # p = 65521: each value is at most 4097 in absolute value, so at most 7 participants.
    reg = fake_registry(30)
    base_announce(registry=reg, p=65521, max_participants=7, min_participants=5)
    with pytest.raises(ParameterError, match="overflow"):
        base_announce(registry=reg, p=65521, max_participants=8, min_participants=5)


def test_duplicate_clerk_ids_are_refused():
    c = list(fake_committee(10))
    c[4] = CommitteeMember("clerk-1", c[4].sign_key, c[4].box_key, c[4].point)
    with pytest.raises(ParameterError, match="twice"):
        base_announce(committee=tuple(c))


def test_duplicate_clerk_keys_are_refused():
    c = list(fake_committee(10))
    c[4] = CommitteeMember("clerk-4", c[4].sign_key, c[1].box_key, c[4].point)
    with pytest.raises(ParameterError, match="key"):
        base_announce(committee=tuple(c))


def test_duplicate_or_out_of_range_points_are_refused():
    c = list(fake_committee(10))
    dup = c.copy()
    dup[3] = CommitteeMember("clerk-3", c[3].sign_key, c[3].box_key, 1)
    with pytest.raises(ParameterError, match="distinct"):
        base_announce(committee=tuple(dup))
    high = c.copy()
    high[3] = CommitteeMember("clerk-3", c[3].sign_key, c[3].box_key, P - 7)  # > p - r - 1
    with pytest.raises(ParameterError, match="points"):
        base_announce(committee=tuple(high))


def test_min_above_max_participants_is_refused():
    with pytest.raises(ParameterError, match="min_participants"):
        base_announce(min_participants=21, max_participants=20)
    base_announce(min_participants=20, max_participants=20)


def test_max_participants_above_registry_is_refused():
    with pytest.raises(ParameterError, match="registry"):
        base_announce(registry=fake_registry(30), max_participants=31)


@pytest.mark.parametrize("result_deadline", [PARTICIPATION_DEADLINE, PARTICIPATION_DEADLINE - 1,
                                             0.0])
def test_result_deadline_must_follow_participation_deadline(result_deadline):
    with pytest.raises(ParameterError, match="deadline"):
        base_announce(result_deadline=result_deadline)


@pytest.mark.parametrize("mechanism,by", [("skellam", "none"), ("discrete_gaussian", "none"),
                                          ("none", "participants"), ("none", "clerks")])
def test_mismatched_noise_fields_are_refused(mechanism, by):
    with pytest.raises(ParameterError, match="noise"):
        base_announce(noise_mechanism=mechanism, noise_added_by=by)


def test_matching_noise_fields_are_accepted():
    a = base_announce(noise_mechanism="discrete_gaussian", noise_added_by="participants",
                      noise_sigma=3.0, noise_headroom=1000)
    assert (a.noise_mechanism, a.noise_added_by) == ("discrete_gaussian", "participants")


@pytest.mark.parametrize("p", [2**31 - 2, 65537 * 32767, 561, 15, 4])  # 561: Carmichael
def test_non_prime_modulus_is_refused(p):
    with pytest.raises(ParameterError, match="prime"):
        base_announce(p=p)


def test_clip_bounds_in_wrong_order_are_refused():
    with pytest.raises(ParameterError, match="clip"):
        base_announce(clip_lo=1.0, clip_hi=-1.0)


def test_new_announce_refuses_what_peers_could_not_decode():
    with pytest.raises(MessageError):
        base_announce(aggregation_id="agg/1")
    with pytest.raises(MessageError):
        base_announce(p=2**31 + 11)


def test_announce_whose_messages_cannot_be_decoded_is_refused():
    """n = 10, d = 2^21, k = 5: B = 419431, so every participation carries n*B*4 = 16.8 MB of
    padded shares, twice MAX_MESSAGE_BYTES. The server would refuse every one of them
    (MessageError: over the limit), so the announce must be refused up front."""
    a_ok = base_announce(dimension=100_000)  # 800 kB participations: fine
    assert a_ok.n * a_ok.blocks * 4 < MAX_MESSAGE_BYTES
    blocks = -(-(2**21) // 5)
    assert 10 * blocks * 4 > MAX_MESSAGE_BYTES
    with pytest.raises(ParameterError):
        base_announce(dimension=2**21)


def test_check_announce_refuses_an_unsafe_announce_built_by_hand():
    a = base_announce(committee=fake_committee(24), k=10, t=5)
    unsafe = Announce.from_wire({**a.to_wire(), "committee": [
        [m.clerk_id, m.sign_key, m.box_key, m.point] for m in fake_committee(26)]})
    with pytest.raises(ParameterError, match="split-set"):
        check_announce(unsafe)


# ===========================================================================================
# A whole round
# ===========================================================================================


def test_full_round_reveals_the_exact_sum():
    w = make_world(devices=30, clerks=10)
    revealed, expected, snap, rec = full_round(w, 30, seed=1)
    assert revealed.aggregation_id == "agg-1"
    assert revealed.participants == 30
    np.testing.assert_array_equal(revealed.field_sum, expected)
    np.testing.assert_array_equal(revealed.values, expected / SCALE)
    assert (expected < 0).any() and (expected > 0).any()  # both signs were summed
    assert revealed.clerks_used == tuple(w.clerk_ids)
    assert revealed.wrong_clerks == ()
    assert snap.participants.tolist() == list(range(30))
    assert rec.result_count == 10 and rec.ready()


def test_round_over_a_subset_of_the_registry():
    w = make_world(devices=30, clerks=10)
    which = [0, 3, 4, 9, 17, 22, 29]
    xs, ints = inputs(w, len(which), seed=5)
    server = w.server()
    participate(w, server, which, xs)
    snap = server.snapshot()
    assert snap.participants.tolist() == which
    assert [d for d, _ in snap.sealed_seeds] == [f"device-{i}" for i in which]
    assert decode_bitmap(snap.bitmap, 30)[0].tolist() == which
    rec = w.recipient_for(snap)
    for env in clerk_results(w, server.jobs(COORDINATOR, w.coordinator)).values():
        rec.add_result(env, NOW)
    np.testing.assert_array_equal(rec.reveal().field_sum, ints.sum(axis=0))


@settings(deadline=None, max_examples=8)
@given(data=st.data())
def test_round_is_exact_for_any_subset_and_inputs(data):
    w = make_world(devices=30, clerks=10)
    which = sorted(data.draw(st.sets(st.integers(0, 29), min_size=5, max_size=30)))
    seed = data.draw(st.integers(0, 2**32 - 1))
    xs, ints = inputs(w, len(which), seed=seed)
    server = w.server()
    # Devices participate in any order; the snapshot sorts them.
    order = data.draw(st.permutations(range(len(which))))
    participate(w, server, [which[i] for i in order], xs[list(order)])
    snap = server.snapshot()
    rec = w.recipient_for(snap)
    for env in clerk_results(w, server.jobs(COORDINATOR, w.coordinator)).values():
        rec.add_result(env, NOW)
    np.testing.assert_array_equal(rec.reveal().field_sum, ints.sum(axis=0))


def test_values_are_clipped_and_large_dimension_rounds():
    w = make_world(devices=12, clerks=10, dimension=23)
    x = np.full(23, 2.5 * CLIP)
    x[::2] = -3 * CLIP  # beyond the clip on both sides
    server = w.server()
    participate(w, server, range(6), np.tile(x, (6, 1)))
    snap = server.snapshot()
    rec = w.recipient_for(snap)
    for env in clerk_results(w, server.jobs(COORDINATOR, w.coordinator)).values():
        rec.add_result(env, NOW)
    want = np.where(np.arange(23) % 2 == 0, -CLIP, CLIP) * 6
    np.testing.assert_array_equal(rec.reveal().values, want)


def test_message_sizes_follow_the_design():
    """Upload is n*B*4 bytes plus a little; a clerk's job is O(|S|/8 + B), not O(|S| * B)."""
    w = make_world(devices=30, clerks=10, dimension=200)  # B = 40
    a = w.announce
    xs, _ = inputs(w, 30)
    server = w.server()
    envs = participate(w, server, range(30), xs)
    words = a.n * a.blocks * 4
    for env in envs:
        assert words + crypto.SIGNATURE_BYTES + 80 <= len(env) <= words + 300
    jobs = server.jobs(COORDINATOR, w.coordinator)
    snap = server.snapshot()
    for _, job_env in jobs:
        assert len(job_env) <= len(snap.bitmap) + 4 * a.blocks + 250
        assert len(job_env) < 30 * 4 * a.blocks  # far below |S| * B words


# ===========================================================================================
# The participant
# ===========================================================================================


def test_participant_never_sends_an_unpadded_share():
    """Recompute the plain shares from controlled randomness: every clerk's row the server
    receives is the plain share plus exactly the pad that clerk can derive, never the share."""
    w = make_world(devices=30, clerks=10, dimension=12)
    a = w.announce
    x = inputs(w, 1, seed=3)[0][0]
    out = w.participant(7).participate(a, x, NOW, rng=np.random.default_rng(0),
                                       random_bytes=deterministic_bytes(b"device-7"))
    msg = Participation.decode(Envelope.decode(out.envelope).payload)
    padded = F.from_uint32_bytes(msg.padded_shares, a.p).reshape(a.n, a.blocks)

    replay = deterministic_bytes(b"device-7")
    seed = replay(crypto.SEED_BYTES)
    encoded = fixed_point_of(a).encode(x, a.p, np.random.default_rng(0))
    masked = F.add(encoded, crypto.mask(seed, a.aggregation_id, a.dimension, a.p), a.p)
    scheme = check_announce(a)
    shares = scheme.share(masked, crypto.random_field_elements(a.t * a.blocks, a.p, replay))

    device_box = w.devices[7].public().box_key
    for c in range(a.n):
        assert not np.array_equal(padded[c], shares[c])
        assert not np.isin(padded[c], shares[c]).any()
        key = crypto.PairwiseKeys(w.clerks[c].exchange).key_for(device_box)
        np.testing.assert_array_equal(F.sub(padded[c], shares[c], a.p),
                                      crypto.pad(key, a.aggregation_id, a.blocks, a.p))
    # The sealed seed opens for the recipient (bound to aggregation and device), for no one else.
    info = seed_info(a.aggregation_id, "device-7")
    assert crypto.open_from(w.recipient.exchange, msg.sealed_seed, info) == seed
    with pytest.raises(DecryptionFailed):
        crypto.open_from(w.coordinator.exchange, msg.sealed_seed, info)
    with pytest.raises(DecryptionFailed):
        crypto.open_from(w.recipient.exchange, msg.sealed_seed, seed_info("agg-1", "device-8"))
    # The shares of x + m reconstruct to x + m (and not to x).
    got = scheme.reconstruct(list(range(a.n)), shares, a.dimension)
    np.testing.assert_array_equal(got, masked)
    assert not np.array_equal(got, encoded)


def test_participations_of_the_same_input_differ():
    w = make_world()
    x = np.zeros(w.announce.dimension)
    e1 = w.participant(1).participate(w.announce, x, NOW).envelope
    e2 = w.participant(1).participate(w.announce, x, NOW).envelope
    p1 = Participation.decode(Envelope.decode(e1).payload)
    p2 = Participation.decode(Envelope.decode(e2).payload)
    assert p1.padded_shares != p2.padded_shares
    assert p1.sealed_seed != p2.sealed_seed


def test_participant_refuses_announce_below_its_policy():
    w = make_world(min_participants=5)
    dev = w.participant(0, policy=ParticipantPolicy(min_participants=6))
    with pytest.raises(ParameterError, match="policy"):
        dev.participate(w.announce, np.zeros(7), NOW)
    assert dev.participated == set()
    ok = w.participant(0, policy=ParticipantPolicy(min_participants=5))
    ok.participate(w.announce, np.zeros(7), NOW)
    assert ok.participated == {"agg-1"}


def test_participant_default_policy_wants_100_participants():
    w = make_world(min_participants=5)
    dev = Participant("device-0", w.devices[0])
    with pytest.raises(ParameterError):
        dev.check(w.announce, NOW)


def test_participant_policy_requiring_noise():
    w = make_world()
    dev = w.participant(0, policy=ParticipantPolicy(min_participants=5, require_noise=True))
    with pytest.raises(ParameterError, match="noise"):
        dev.check(w.announce, NOW)
    noisy = make_world(noise_mechanism="skellam", noise_added_by="clerks", noise_sigma=2.0,
                       noise_headroom=10_000)
    dev.check(noisy.announce, NOW)


def test_participant_refuses_after_the_deadline():
    w = make_world()
    dev = w.participant(0)
    dev.check(w.announce, PARTICIPATION_DEADLINE)  # the deadline itself is still in time
    with pytest.raises(ProtocolError, match="deadline"):
        dev.participate(w.announce, np.zeros(7), PARTICIPATION_DEADLINE + 0.001)
    assert dev.participated == set()


def test_participant_refuses_a_second_participation():
    w = make_world()
    done: set[str] = set()
    dev = w.participant(0, participated=done)
    out = dev.participate(w.announce, np.zeros(7), NOW)
    assert out.aggregation_id == "agg-1" and done == {"agg-1"}
    with pytest.raises(AlreadyProcessed):
        dev.participate(w.announce, np.ones(7), NOW)
    # The persisted set survives a restart of the device.
    again = w.participant(0, participated=done)
    with pytest.raises(AlreadyProcessed):
        again.participate(w.announce, np.ones(7), NOW)
    # Another aggregation is fine.
    other = make_world(aggregation_id="agg-2")
    again.participate(other.announce, np.ones(7), NOW)
    assert done == {"agg-1", "agg-2"}


def test_participant_refuses_bad_inputs_without_burning_its_participation():
    w = make_world(dimension=7)
    dev = w.participant(0)
    with pytest.raises(ParameterError, match="shape"):
        dev.participate(w.announce, np.zeros(8), NOW)
    with pytest.raises(ParameterError, match="shape"):
        dev.participate(w.announce, np.zeros((7, 1)), NOW)
    with pytest.raises(EncodingError):
        dev.participate(w.announce, np.full(7, np.nan), NOW)
    with pytest.raises(EncodingError):
        dev.participate(w.announce, np.array([0, 0, 0, np.inf, 0, 0, 0]), NOW)
    assert dev.participated == set()
    dev.participate(w.announce, np.zeros(7), NOW)


def test_participant_runs_the_committee_check():
    w = make_world()
    seen = []

    def refuse(a: Announce) -> None:
        seen.append(a.aggregation_id)
        raise ProtocolError("committee is not the verifiable draw")

    dev = w.participant(0, committee_check=refuse)
    with pytest.raises(ProtocolError, match="verifiable draw"):
        dev.participate(w.announce, np.zeros(7), NOW)
    assert seen == ["agg-1"] and dev.participated == set()


def test_participant_refuses_an_unsafe_announce():
    w = make_world()  # n = 10
    fragile = Announce.from_wire({**w.announce.to_wire(), "k": 9, "t": 1})  # r=10 <= 10 < 19
    split = Announce.from_wire({**w.announce.to_wire(), "k": 3, "t": 2})  # 2r - t = 8 <= 10
    dev = w.participant(0)
    dev.check(fragile, NOW)
    with pytest.raises(ParameterError, match="split-set"):
        dev.participate(split, np.zeros(7), NOW)
    assert dev.participated == set()


def test_open_announce_accepts_the_coordinator():
    w = make_world()
    a = open_announce(w.announce_envelope(), COORDINATOR, w.coordinator.public().sign_key)
    assert a == w.announce


def test_open_announce_refuses_another_signer():
    w = make_world()
    key = w.coordinator.public().sign_key
    mallory = identity("mallory")
    with pytest.raises(UnknownSender):
        open_announce(seal(w.announce, "mallory", mallory), COORDINATOR, key)
    with pytest.raises(BadSignature):
        open_announce(seal(w.announce, COORDINATOR, mallory), COORDINATOR, key)
    # Signed by the coordinator, but naming another coordinator inside.
    renamed = Announce.from_wire({**w.announce.to_wire(), "coordinator_id": "mallory"})
    with pytest.raises(UnknownSender):
        open_announce(seal(renamed, COORDINATOR, w.coordinator), COORDINATOR, key)


def test_open_announce_runs_the_parameter_checks():
    w = make_world()
    unsafe = Announce.from_wire({**w.announce.to_wire(), "k": 3, "t": 2})
    with pytest.raises(ParameterError):
        open_announce(seal(unsafe, COORDINATOR, w.coordinator), COORDINATOR,
                      w.coordinator.public().sign_key)


# ===========================================================================================
# The server
# ===========================================================================================


def test_server_refuses_a_registry_other_than_the_announced_one():
    w = make_world(devices=30)
    other = Registry(list(w.registry.entries)[:29])
    with pytest.raises(ProtocolError, match="registry"):
        Server(w.announce, other)
    swapped = Registry([*w.registry.entries[1:2], *w.registry.entries[:1], *w.registry.entries[2:]])
    with pytest.raises(ProtocolError, match="registry"):
        Server(w.announce, swapped)


def test_server_refuses_a_duplicate_and_keeps_the_first():
    w = make_world()
    xs, ints = inputs(w, 10, seed=2)
    server = w.server()
    envs = participate(w, server, range(10), xs)
    with pytest.raises(AlreadyProcessed):
        server.accept(envs[3], NOW)
    # A second, different participation of device 3 (e.g. a device that lost its state).
    second = w.participant(3).participate(w.announce, xs[3] + 1.0, NOW).envelope
    with pytest.raises(AlreadyProcessed):
        server.accept(second, NOW)
    assert server.participant_count == 10
    snap = server.snapshot()
    rec = w.recipient_for(snap)
    for env in clerk_results(w, server.jobs(COORDINATOR, w.coordinator)).values():
        rec.add_result(env, NOW)
    revealed = rec.reveal()
    assert revealed.participants == 10
    np.testing.assert_array_equal(revealed.field_sum, ints.sum(axis=0))


def test_server_refuses_after_the_deadline():
    w = make_world()
    server = w.server()
    env = w.participant(0).participate(w.announce, np.zeros(7), NOW).envelope
    with pytest.raises(ProtocolError, match="deadline"):
        server.accept(env, PARTICIPATION_DEADLINE + 0.5)
    assert server.participant_count == 0
    assert server.accept(env, PARTICIPATION_DEADLINE) == "device-0"


def test_server_refuses_after_the_snapshot():
    w = make_world(min_participants=5)
    xs, _ = inputs(w, 6)
    server = w.server()
    participate(w, server, range(5), xs[:5])
    snap = server.snapshot()
    late = w.participant(5).participate(w.announce, xs[5], NOW).envelope
    with pytest.raises(ProtocolError, match="closed"):
        server.accept(late, NOW)
    assert server.snapshot() is snap  # idempotent, unchanged
    assert snap.participants.tolist() == [0, 1, 2, 3, 4]


def test_server_refuses_an_unregistered_device():
    w = make_world(devices=30)
    big = make_world(devices=31)  # device-30 exists only here
    env = big.participant(30).participate(big.announce, np.zeros(7), NOW).envelope
    server = w.server()
    with pytest.raises(UnknownSender, match="device-30"):
        server.accept(env, NOW)
    assert server.participant_count == 0


def test_server_refuses_a_device_signing_as_another():
    w = make_world()
    server = w.server()
    real = w.participant(1).participate(w.announce, np.zeros(7), NOW).envelope
    msg = Participation.decode(Envelope.decode(real).payload)
    # Device 2 signs with its own key under device 1's name.
    with pytest.raises(BadSignature):
        server.accept(seal(msg, "device-1", w.devices[2]), NOW)
    # Device 2 signs as itself a participation that names device 1.
    with pytest.raises(UnknownSender):
        server.accept(seal(msg, "device-2", w.devices[2]), NOW)
    # Device 1's envelope with the signer field changed to device 2.
    env = Envelope.decode(real)
    with pytest.raises(BadSignature):
        server.accept(Envelope("device-2", env.payload, env.signature).encode(), NOW)
    assert server.participant_count == 0
    assert server.accept(real, NOW) == "device-1"


def test_server_refuses_padded_shares_of_the_wrong_size():
    w = make_world()
    a = w.announce
    server = w.server()
    seed = crypto.seal_to(a.recipient_key, bytes(32), seed_info(a.aggregation_id, "device-0"))
    want = 4 * a.n * a.blocks
    for size in (0, want - 4, want + 4, 4 * a.n, 4 * a.blocks):
        with pytest.raises(MessageError, match="padded_shares"):
            server.accept(participation(w, 0, bytes(size), seed), NOW)
    # right size, but a word that is not a field element
    words = np.zeros(a.n * a.blocks, np.uint32)
    words[5] = P
    with pytest.raises(MessageError, match="padded_shares"):
        server.accept(participation(w, 0, words.astype("<u4").tobytes(), seed), NOW)
    assert server.participant_count == 0
    assert server.accept(participation(w, 0, bytes(want), seed), NOW) == "device-0"


def test_server_refuses_a_participation_for_another_aggregation():
    w = make_world()
    other = make_world(aggregation_id="agg-2")
    env = other.participant(0).participate(other.announce, np.zeros(7), NOW).envelope
    with pytest.raises(ProtocolError, match="agg-2"):
        w.server().accept(env, NOW)


def test_server_refuses_garbage():
    w = make_world()
    server = w.server()
    for raw in (b"", b"\x00", os.urandom(100), w.announce_envelope()):
        with pytest.raises((MessageError, UnknownSender)):
            server.accept(raw, NOW)


def test_server_stops_at_max_participants():
    w = make_world(min_participants=5, max_participants=6)
    xs, _ = inputs(w, 7)
    server = w.server()
    participate(w, server, range(6), xs[:6])
    env = w.participant(6).participate(w.announce, xs[6], NOW).envelope
    with pytest.raises(ProtocolError, match="already 6"):
        server.accept(env, NOW)
    assert server.participant_count == 6


def test_snapshot_needs_min_participants():
    w = make_world(min_participants=8)
    xs, _ = inputs(w, 8)
    server = w.server()
    participate(w, server, range(7), xs[:7])
    with pytest.raises(ProtocolError, match="min_participants"):
        server.snapshot()
    with pytest.raises(ProtocolError):
        server.jobs(COORDINATOR, w.coordinator)
    assert server.snapshot_taken is None
    participate(w, server, [7], xs[7:])
    assert len(server.snapshot().participants) == 8


def test_snapshot_sums_the_padded_shares_and_binds_the_set():
    w = make_world()
    a = w.announce
    xs, _ = inputs(w, 9)
    server = w.server()
    envs = participate(w, server, [2, 4, 6, 8, 10, 12, 14, 16, 18], xs)
    snap = server.snapshot()
    rows = [F.from_uint32_bytes(Participation.decode(Envelope.decode(e).payload).padded_shares, P)
            for e in envs]
    np.testing.assert_array_equal(snap.summed.reshape(-1), np.mod(np.sum(rows, axis=0), P))
    raw = bitmap_bytes(snap.participants, a.registry_size)
    assert snap.hash == snapshot_hash(a.digest(), raw)
    jobs = server.jobs(COORDINATOR, w.coordinator)
    assert [name for name, _ in jobs] == w.clerk_ids
    for j, (name, env) in enumerate(jobs):
        msg = ClerkJob.decode(Envelope.decode(env).payload)
        assert msg.clerk_id == name and msg.snapshot_hash == snap.hash
        assert msg.participants == snap.bitmap
        np.testing.assert_array_equal(F.from_uint32_bytes(msg.summed_shares, P), snap.summed[j])


# ===========================================================================================
# The clerk
# ===========================================================================================


def closed_round(w, count=10, seed=0):
    xs, ints = inputs(w, count, seed)
    server = w.server()
    envs = participate(w, server, range(count), xs)
    return server, server.snapshot(), server.jobs(COORDINATOR, w.coordinator), envs, ints


def test_clerk_refuses_a_second_job_for_the_same_aggregation():
    w = make_world()
    _, _, jobs, _, _ = closed_round(w)
    processed: set[str] = set()
    clerk = w.clerk(0, processed=processed)
    done = clerk.handle_job(w.announce, jobs[0][1], w.registry, NOW)
    assert done.aggregation_id == "agg-1" and done.participants == 10
    assert processed == {"agg-1"}
    with pytest.raises(AlreadyProcessed):
        clerk.handle_job(w.announce, jobs[0][1], w.registry, NOW)
    # After a restart with the persisted set.
    with pytest.raises(AlreadyProcessed):
        w.clerk(0, processed=processed).handle_job(w.announce, jobs[0][1], w.registry, NOW)


def test_split_set_attack_is_stopped_by_honest_clerks():
    """A server shows set S1 to clerks 0..6 and S2 to clerks 3..9 (r = 7, t = 2): the four
    clerks in both groups refuse the second job, so S2 never gets r results."""
    w = make_world(devices=30, clerks=10)
    a = w.announce
    xs, ints = inputs(w, 25, seed=4)
    envs = [w.participant(i).participate(a, x, NOW).envelope for i, x in enumerate(xs)]
    s1, s2 = w.server(), w.server()
    for e in envs[:20]:
        s1.accept(e, NOW)
    for e in envs[5:]:
        s2.accept(e, NOW)
    jobs1 = s1.jobs(COORDINATOR, w.coordinator)
    jobs2 = s2.jobs(COORDINATOR, w.coordinator)
    snap1, snap2 = s1.snapshot(), s2.snapshot()
    assert snap1.hash != snap2.hash

    clerks = [w.clerk(j) for j in range(10)]
    rec1 = w.recipient_for(snap1)
    for j in range(7):
        rec1.add_result(clerks[j].handle_job(a, jobs1[j][1], w.registry, NOW).envelope, NOW)
    np.testing.assert_array_equal(rec1.reveal().field_sum, ints[:20].sum(axis=0))

    rec2 = w.recipient_for(snap2)
    for j in range(3, 10):
        if j < 7:
            with pytest.raises(AlreadyProcessed):
                clerks[j].handle_job(a, jobs2[j][1], w.registry, NOW)
            # The job itself is valid: a clerk without history would have processed it.
            w.clerk(j).handle_job(a, jobs2[j][1], w.registry, NOW)
        else:
            rec2.add_result(clerks[j].handle_job(a, jobs2[j][1], w.registry, NOW).envelope, NOW)
    assert rec2.result_count == 3 and not rec2.ready()
    with pytest.raises(ReconstructionError):
        rec2.reveal()


def test_clerk_refuses_fewer_than_min_participants():
    w = make_world(min_participants=5)
    a = w.announce
    clerk = w.clerk(0)
    for members, ok in (([1, 2, 3, 4], False), ([], False), ([0, 1, 2, 3, 4], True)):
        S = np.asarray(members, np.int64)
        h = snapshot_hash(a.digest(), bitmap_bytes(S, a.registry_size))
        raw = job(w, "clerk-0", h, encode_bitmap(S, a.registry_size))
        if ok:
            assert clerk.handle_job(a, raw, w.registry, NOW).participants == 5
        else:
            with pytest.raises(ProtocolError, match="fewer than min_participants"):
                clerk.handle_job(a, raw, w.registry, NOW)
            assert clerk.processed == set()


def test_clerk_refuses_more_than_max_participants():
    w = make_world(min_participants=5, max_participants=20)
    a = w.announce
    S = np.arange(21)
    h = snapshot_hash(a.digest(), bitmap_bytes(S, a.registry_size))
    with pytest.raises(ProtocolError, match="max_participants"):
        w.clerk(0).handle_job(a, job(w, "clerk-0", h, encode_bitmap(S, a.registry_size)),
                              w.registry, NOW)


def test_clerk_refuses_a_snapshot_hash_that_does_not_match_the_bitmap():
    w = make_world()
    a = w.announce
    _, snap, jobs, _, _ = closed_round(w)
    clerk = w.clerk(2)
    summed = F.to_uint32_bytes(snap.summed[2])
    subset = snap.participants[:-1]
    cases = [
        job(w, "clerk-2", os.urandom(32), snap.bitmap, summed),
        job(w, "clerk-2", snap.hash, encode_bitmap(subset, a.registry_size), summed),
        # the hash of this set, but under another announce
        job(w, "clerk-2", snapshot_hash(make_world(aggregation_id="agg-9").announce.digest(),
                                        bitmap_bytes(snap.participants, a.registry_size)),
            snap.bitmap, summed),
    ]
    for raw in cases:
        with pytest.raises(ProtocolError, match="snapshot hash"):
            clerk.handle_job(a, raw, w.registry, NOW)
    assert clerk.processed == set()
    assert clerk.handle_job(a, jobs[2][1], w.registry, NOW).participants == 10


def test_clerk_refuses_a_job_not_signed_by_the_coordinator():
    w = make_world()
    _, _, jobs, _, _ = closed_round(w)
    msg = ClerkJob.decode(Envelope.decode(jobs[0][1]).payload)
    clerk = w.clerk(0)
    with pytest.raises(UnknownSender):
        clerk.handle_job(w.announce, seal(msg, "mallory", identity("mallory")), w.registry, NOW)
    with pytest.raises(BadSignature):
        clerk.handle_job(w.announce, seal(msg, COORDINATOR, identity("mallory")), w.registry,
                         NOW)
    with pytest.raises(UnknownSender):  # a clerk's own key is not the coordinator's
        clerk.handle_job(w.announce, seal(msg, "clerk-0", w.clerks[0]), w.registry, NOW)
    assert clerk.processed == set()


def test_clerk_refuses_a_job_addressed_to_another_clerk():
    w = make_world()
    _, _, jobs, _, _ = closed_round(w)
    clerk = w.clerk(1)
    with pytest.raises(UnknownSender, match="clerk-0"):
        clerk.handle_job(w.announce, jobs[0][1], w.registry, NOW)
    assert clerk.processed == set()
    clerk.handle_job(w.announce, jobs[1][1], w.registry, NOW)


def test_clerk_not_on_the_committee_refuses():
    w = make_world()
    _, snap, _, _, _ = closed_round(w)
    outsider = Clerk("clerk-99", identity("clerk-99"), COORDINATOR,
                     w.coordinator.public().sign_key)
    with pytest.raises(ProtocolError, match="not on the committee"):
        outsider.handle_job(w.announce, job(w, "clerk-99", snap.hash, snap.bitmap), w.registry,
                            NOW)
    # The right name but another key than the committee lists.
    impostor = Clerk("clerk-0", w.clerks[1], COORDINATOR, w.coordinator.public().sign_key)
    with pytest.raises(ProtocolError, match="not on the committee"):
        impostor.handle_job(w.announce, job(w, "clerk-0", snap.hash, snap.bitmap), w.registry,
                            NOW)


def test_clerk_refuses_after_the_result_deadline():
    w = make_world()
    _, _, jobs, _, _ = closed_round(w)
    clerk = w.clerk(0)
    with pytest.raises(ProtocolError, match="deadline"):
        clerk.handle_job(w.announce, jobs[0][1], w.registry, RESULT_DEADLINE + 1)
    assert clerk.handle_job(w.announce, jobs[0][1], w.registry, RESULT_DEADLINE).participants


def test_clerk_refuses_another_registry_or_aggregation():
    w = make_world()
    _, _, jobs, _, _ = closed_round(w)
    clerk = w.clerk(0)
    with pytest.raises(ProtocolError, match="registry"):
        clerk.handle_job(w.announce, jobs[0][1], Registry(w.registry.entries[:-1]), NOW)
    other = make_world(aggregation_id="agg-2")
    with pytest.raises(ProtocolError, match=r"agg-2|agg-1"):
        clerk.handle_job(other.announce, jobs[0][1], w.registry, NOW)
    assert clerk.processed == set()


def test_clerk_refuses_summed_shares_of_the_wrong_size_or_range():
    w = make_world()
    a = w.announce
    _, snap, _, _, _ = closed_round(w)
    clerk = w.clerk(0)
    for summed in (b"", bytes(4 * a.blocks + 4), bytes(4 * a.blocks - 4),
                   np.full(a.blocks, P, "<u4").tobytes(),
                   np.full(a.blocks, 2**32 - 1, "<u4").tobytes()):
        with pytest.raises(MessageError, match="summed_shares"):
            clerk.handle_job(a, job(w, "clerk-0", snap.hash, snap.bitmap, summed), w.registry,
                             NOW)
    assert clerk.processed == set()


@functools.cache
def _bad_bitmaps(size: int) -> dict[str, bytes]:
    n_bytes = (size + 7) // 8
    good = bitmap_bytes(np.arange(10), size)
    beyond = bytearray(good)
    beyond[-1] |= 0x80  # bit 31 of a 30-device registry
    comp = zlib.compress(good)
    return {
        "zip bomb": zlib.compress(bytes(50 * 2**20), 9),
        "one byte more": zlib.compress(good + b"\x00"),
        "one byte less": zlib.compress(good[:-1]),
        "empty bitmap": zlib.compress(b""),
        "bits beyond the registry": zlib.compress(bytes(beyond)),
        "all ones": zlib.compress(b"\xff" * n_bytes),
        "not zlib": b"\x00\x01\x02\x03" * 4,
        "raw bitmap": good,
        "empty": b"",
        "truncated stream": comp[:-3],
        "garbage after the stream": comp + b"\x00",
        "two streams": comp + comp,
        "gzip header": b"\x1f\x8b\x08\x00" + comp[2:],
    }


@pytest.mark.parametrize("name", list(_bad_bitmaps(30)))
def test_clerk_refuses_a_malformed_bitmap(name):
    w = make_world(devices=30)
    assert w.announce.registry_size == 30
    bad = _bad_bitmaps(30)[name]
    clerk = w.clerk(0)
    with pytest.raises(MessageError, match="bitmap"):
        clerk.handle_job(w.announce, job(w, "clerk-0", os.urandom(32), bad), w.registry, NOW)
    assert clerk.processed == set()


def test_zip_bomb_is_not_inflated():
    bomb = zlib.compress(bytes(50 * 2**20), 9)
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(MessageError, match="exactly 4 bytes"):
            decode_bitmap(bomb, 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"decoding a 4-byte bitmap allocated {peak} bytes"


@settings(deadline=None, max_examples=100)
@given(size=st.integers(1, 300), data=st.data())
def test_bitmap_round_trip(size, data):
    members = sorted(data.draw(st.sets(st.integers(0, size - 1), max_size=size)))
    S = np.asarray(members, np.int64)
    got, raw = decode_bitmap(encode_bitmap(S, size), size)
    assert got.tolist() == members
    assert raw == bitmap_bytes(S, size)
    assert len(raw) == (size + 7) // 8


@settings(deadline=None, max_examples=200)
@given(data=st.binary(max_size=64), size=st.integers(1, 200))
def test_decode_bitmap_of_random_bytes_only_raises_message_error(data, size):
    try:
        S, raw = decode_bitmap(data, size)
    except MessageError:
        return
    assert len(raw) == (size + 7) // 8 and (size > S).all()


# ===========================================================================================
# The recipient
# ===========================================================================================


def answered_round(w, count=10, seed=0):
    """A closed round with every clerk's result; returns the recipient (empty), results, truth."""
    _, snap, jobs, _, ints = closed_round(w, count, seed)
    return w.recipient_for(snap), clerk_results(w, jobs), ints.sum(axis=0), snap


def test_recipient_refuses_a_replayed_result():
    w = make_world()
    rec, results, want, _ = answered_round(w)
    assert rec.add_result(results[0], NOW) == "clerk-0"
    with pytest.raises(AlreadyProcessed):
        rec.add_result(results[0], NOW)
    assert rec.result_count == 1
    for j in range(1, 10):
        rec.add_result(results[j], NOW)
    np.testing.assert_array_equal(rec.reveal().field_sum, want)


def test_recipient_refuses_a_result_for_another_snapshot():
    w = make_world()
    rec, results, _, snap = answered_round(w)
    res = ClerkResult.decode(Envelope.decode(results[0]).payload)
    forged = ClerkResult(res.aggregation_id, res.clerk_id, os.urandom(32), res.sealed_share)
    with pytest.raises(ProtocolError, match="another participant set"):
        rec.add_result(w.sign_as_clerk(0, forged), NOW)
    # A genuine result, computed for another participant set.
    _, other_results, _, other_snap = answered_round(w, count=9)
    assert other_snap.hash != snap.hash
    with pytest.raises(ProtocolError):
        rec.add_result(other_results[0], NOW)
    assert rec.result_count == 0


def test_recipient_refuses_a_non_member():
    w = make_world()
    rec, results, _, _ = answered_round(w)
    res = ClerkResult.decode(Envelope.decode(results[0]).payload)
    outsider = ClerkResult(res.aggregation_id, "clerk-99", res.snapshot_hash, res.sealed_share)
    with pytest.raises(UnknownSender):
        rec.add_result(seal(outsider, "clerk-99", identity("clerk-99")), NOW)
    with pytest.raises(UnknownSender):  # a registered device is not a clerk either
        rec.add_result(seal(res, "device-0", w.devices[0]), NOW)
    with pytest.raises(UnknownSender):  # nor is the coordinator
        rec.add_result(seal(res, COORDINATOR, w.coordinator), NOW)
    assert rec.result_count == 0


def test_recipient_refuses_a_clerk_answering_for_another():
    w = make_world()
    rec, results, _, _ = answered_round(w)
    res0 = ClerkResult.decode(Envelope.decode(results[0]).payload)
    with pytest.raises(UnknownSender):  # clerk 1 signs clerk 0's result as itself
        rec.add_result(w.sign_as_clerk(1, res0), NOW)
    with pytest.raises(BadSignature):  # clerk 1 signs under clerk 0's name
        rec.add_result(seal(res0, "clerk-0", w.clerks[1]), NOW)
    # Clerk 1 re-labels clerk 0's sealed share as its own: the box is bound to clerk 0.
    res1 = ClerkResult.decode(Envelope.decode(results[1]).payload)
    stolen = ClerkResult(res1.aggregation_id, "clerk-1", res1.snapshot_hash, res0.sealed_share)
    with pytest.raises(DecryptionFailed):
        rec.add_result(w.sign_as_clerk(1, stolen), NOW)
    assert rec.result_count == 0


def test_recipient_refuses_a_tampered_sealed_share():
    w = make_world()
    rec, results, _, _ = answered_round(w)
    res = ClerkResult.decode(Envelope.decode(results[4]).payload)
    for pos in (0, 31, 32, len(res.sealed_share) // 2, len(res.sealed_share) - 1):
        sealed = bytearray(res.sealed_share)
        sealed[pos] ^= 0x01
        forged = ClerkResult(res.aggregation_id, res.clerk_id, res.snapshot_hash, bytes(sealed))
        with pytest.raises(DecryptionFailed):
            rec.add_result(w.sign_as_clerk(4, forged), NOW)
    for sealed in (b"", res.sealed_share[:-1], res.sealed_share + b"\x00"):
        forged = ClerkResult(res.aggregation_id, res.clerk_id, res.snapshot_hash, sealed)
        with pytest.raises(DecryptionFailed):
            rec.add_result(w.sign_as_clerk(4, forged), NOW)
    assert rec.result_count == 0
    assert rec.add_result(results[4], NOW) == "clerk-4"


def test_recipient_refuses_a_share_sealed_to_someone_else():
    w = make_world()
    rec, results, _, _ = answered_round(w)
    res, share = open_result(w, results[2])
    info = result_info(res.aggregation_id, res.clerk_id, res.snapshot_hash)
    sealed = crypto.seal_to(identity("mallory").public().box_key, F.to_uint32_bytes(share), info)
    forged = ClerkResult(res.aggregation_id, res.clerk_id, res.snapshot_hash, sealed)
    with pytest.raises(DecryptionFailed):
        rec.add_result(w.sign_as_clerk(2, forged), NOW)


def test_recipient_refuses_a_share_of_the_wrong_size_or_range():
    w = make_world()
    a = w.announce
    rec, results, _, _ = answered_round(w)
    res = ClerkResult.decode(Envelope.decode(results[3]).payload)
    info = result_info(res.aggregation_id, res.clerk_id, res.snapshot_hash)
    for plain in (bytes(4 * a.blocks + 4), bytes(4 * a.blocks - 1), b"",
                  np.full(a.blocks, P, "<u4").tobytes()):
        sealed = crypto.seal_to(a.recipient_key, plain, info)
        forged = ClerkResult(res.aggregation_id, res.clerk_id, res.snapshot_hash, sealed)
        with pytest.raises(MessageError, match="share"):
            rec.add_result(w.sign_as_clerk(3, forged), NOW)
    assert rec.result_count == 0


def test_recipient_refuses_late_results_and_other_aggregations():
    w = make_world()
    rec, results, _, _ = answered_round(w)
    with pytest.raises(ProtocolError, match="deadline"):
        rec.add_result(results[0], RESULT_DEADLINE + 1)
    res = ClerkResult.decode(Envelope.decode(results[0]).payload)
    other = ClerkResult("agg-2", res.clerk_id, res.snapshot_hash, res.sealed_share)
    with pytest.raises(ProtocolError, match="agg-2"):
        rec.add_result(w.sign_as_clerk(0, other), NOW)
    assert rec.result_count == 0
    assert rec.add_result(results[0], RESULT_DEADLINE) == "clerk-0"


@pytest.mark.parametrize("wrong", [0, 4, 9])
def test_reveal_corrects_and_names_one_wrong_clerk(wrong):
    w = make_world(clerks=10)  # r = 7, safe radius with 10 results: min(1, 10-7-2) = 1
    assert safe_max_errors(10, 7, 2) == 1
    rec, results, want, _ = answered_round(w, seed=wrong)
    for j, env in results.items():
        if j == wrong:
            env = reseal_result(w, j, env, lambda s: s + 12345)
        rec.add_result(env, NOW)
    revealed = rec.reveal()
    assert revealed.wrong_clerks == (f"clerk-{wrong}",)
    np.testing.assert_array_equal(revealed.field_sum, want)


def test_reveal_corrects_and_names_two_wrong_clerks_on_a_larger_committee():
    w = make_world(clerks=13, k=6, t=2)  # r = 8, safe radius with 13 results: 2
    assert safe_max_errors(13, 8, 2) == 2
    rec, results, want, _ = answered_round(w, seed=3)
    rng = np.random.default_rng(0)
    for j, env in results.items():
        if j in (2, 11):
            env = reseal_result(w, j, env, lambda s: rng.integers(0, P, s.shape))
        rec.add_result(env, NOW)
    revealed = rec.reveal()
    assert sorted(revealed.wrong_clerks) == ["clerk-11", "clerk-2"]
    np.testing.assert_array_equal(revealed.field_sum, want)


def test_wrong_clerk_is_named_by_its_committee_position_when_others_dropped():
    """With clerks 0 and 3 silent, the wrong result's position among the answers (4) differs
    from its committee position (6): the recipient must name clerk-6."""
    w = make_world(clerks=13, k=6, t=2)  # r = 8; 11 answers: safe radius min(1, 1) = 1
    rec, results, want, _ = answered_round(w, seed=12)
    for j, env in results.items():
        if j in (0, 3):
            continue
        if j == 6:
            env = reseal_result(w, j, env, lambda s: s + 7)
        rec.add_result(env, NOW)
    revealed = rec.reveal()
    assert revealed.wrong_clerks == ("clerk-6",)
    assert "clerk-0" not in revealed.clerks_used and "clerk-3" not in revealed.clerks_used
    np.testing.assert_array_equal(revealed.field_sum, want)


def test_reveal_with_too_many_wrong_clerks_raises():
    w = make_world(clerks=10)
    rec, results, _, _ = answered_round(w)
    for j, env in results.items():
        if j in (1, 6):
            env = reseal_result(w, j, env, lambda s: s + 1)
        rec.add_result(env, NOW)
    with pytest.raises(ReconstructionError):
        rec.reveal()
    with pytest.raises(ReconstructionError):
        rec.reveal(max_errors=5)  # capped at what Berlekamp-Welch can do


def test_reveal_with_one_wrong_result_and_no_redundancy_raises():
    w = make_world(clerks=10)  # 8 results, r = 7: safe radius min(0, -1) = 0
    rec, results, _, _ = answered_round(w)
    for j in range(8):
        env = results[j]
        if j == 3:
            env = reseal_result(w, j, env, lambda s: s + 1)
        rec.add_result(env, NOW)
    with pytest.raises(ReconstructionError):
        rec.reveal()


def test_colluding_clerks_cannot_steer_the_safe_decoder_to_a_wrong_sum():
    """t = 2 colluders add a codeword difference on 3 positions (the code's minimum distance)
    so the results lie one error away from another codeword. The unsafe radius decodes to a
    wrong sum and blames an honest clerk; the safe radius refuses."""
    w = make_world(clerks=13, k=6, t=2)  # r = 8
    a = w.announce
    rec, results, want, _ = answered_round(w, seed=8)
    answered = list(range(10))  # three clerks dropped out: m = 10
    assert safe_max_errors(10, 8, 2) == 0
    colluders, victim = (0, 1), 2
    zeros_at = [a.committee[j].point for j in answered if j not in (*colluders, victim)]
    assert len(zeros_at) == a.k + a.t - 1

    def g(x: int) -> int:  # degree r - 1 polynomial vanishing on 7 of the 10 answering clerks
        return math.prod(x - z for z in zeros_at) % P

    for j in answered:
        env = results[j]
        if j in colluders:
            env = reseal_result(w, j, env, lambda s, j=j: s + g(a.committee[j].point))
        rec.add_result(env, NOW)
    with pytest.raises(ReconstructionError):
        rec.reveal()
    # The attack is real: trusting more than the safe radius gives a wrong sum.
    unsafe = rec.reveal(max_errors=1)
    assert unsafe.wrong_clerks == (f"clerk-{victim}",)
    assert not np.array_equal(unsafe.field_sum, want)


def test_reveal_with_dropped_clerks_is_exact():
    w = make_world(clerks=10)
    rec, results, want, _ = answered_round(w, seed=6)
    for j in (9, 0, 5, 2, 7, 3):  # six results, in any order
        rec.add_result(results[j], NOW)
        assert not rec.ready()
    with pytest.raises(ReconstructionError, match="need r=7"):
        rec.reveal()
    rec.add_result(results[8], NOW)
    assert rec.ready()
    revealed = rec.reveal()
    np.testing.assert_array_equal(revealed.field_sum, want)
    assert revealed.clerks_used == ("clerk-0", "clerk-2", "clerk-3", "clerk-5", "clerk-7",
                                    "clerk-8", "clerk-9")


def test_reveal_names_a_participant_whose_seed_does_not_open():
    w = make_world()
    a = w.announce
    xs, _ = inputs(w, 8)
    server = w.server()
    participate(w, server, range(7), xs[:7])
    # Device 7 seals its seed with the info of another device (or aggregation).
    real = w.participant(7).participate(a, xs[7], NOW).envelope
    msg = Participation.decode(Envelope.decode(real).payload)
    bad_seed = crypto.seal_to(a.recipient_key, os.urandom(32), seed_info(a.aggregation_id,
                                                                         "device-6"))
    server.accept(participation(w, 7, msg.padded_shares, bad_seed), NOW)
    snap = server.snapshot()
    rec = w.recipient_for(snap)
    for env in clerk_results(w, server.jobs(COORDINATOR, w.coordinator)).values():
        rec.add_result(env, NOW)
    with pytest.raises(ProtocolError, match="device-7") as info:
        rec.reveal()
    assert "device-6" not in str(info.value)


def test_recipient_with_another_key_cannot_reveal():
    w = make_world()
    _, snap, jobs, _, _ = closed_round(w)
    rec = Recipient(identity("mallory"), w.announce, snap.hash, snap.sealed_seeds)
    with pytest.raises(DecryptionFailed):
        rec.add_result(clerk_results(w, jobs, which=[0])[0], NOW)


@settings(deadline=None, max_examples=200)
@given(m=st.integers(0, 200), r=st.integers(1, 100), t=st.integers(1, 50))
def test_safe_max_errors_keeps_t_errors_detectable(m, r, t):
    e = safe_max_errors(m, r, t)
    assert e >= 0
    if m >= r:
        assert 2 * e <= m - r  # unique decoding
        if e > 0:
            # t wrong results plus e corrected ones stay below the minimum distance m - r + 1
            assert t + e <= m - r

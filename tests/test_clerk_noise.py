"""Clerk-added DP noise (DESIGN §3, noise_added_by = "clerks"): every committee member takes part in step 2
as a noise participant with a bounded Skellam share of variance sigma^2 / (n - t). The reveal is the devices'
sum plus that noise; the participant count is the devices'; an announce whose headroom cannot hold n shares
is refused by everyone."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cluster import Cluster
from protocol_fixtures import COORDINATOR, NOW, P, World, announce_kwargs, inputs, make_world, participate

from sda import crypto
from sda.errors import AlreadyProcessed, ParameterError, ProtocolError
from sda.noise import clerk_noise_headroom, clerk_share_variance, share_bound
from sda.protocol.messages import Announce, seal
from sda.protocol.noise_participant import NoiseParticipant
from sda.protocol.params import open_announce
from sda.protocol.participant import share_input
from sda.protocol.recipient import Recipient
from sda.protocol.server import new_announce
from sda.simulation import default_thresholds

SIGMA = 40.0  # field units


def noisy_world(sigma: float = SIGMA, headroom: int | None = None, **over) -> World:
    n, t = over.get("clerks", 10), over.get("t", 2)
    h = clerk_noise_headroom(sigma, n, t) if headroom is None else headroom
    return make_world(noise_mechanism="skellam", noise_added_by="clerks", noise_sigma=sigma, noise_headroom=h,
                      **over)


def noise_participant(w: World, j: int, **kw) -> NoiseParticipant:
    return NoiseParticipant(w.clerk_ids[j], w.clerks[j], **kw)


def lazy_noise(w: World, j: int) -> bytes:
    """Clerk j's participation with no noise at all (a colluding clerk saving the privacy of no one)."""
    msg = share_input(w.announce, w.clerk_ids[j], crypto.PairwiseKeys(w.clerks[j].exchange),
                      np.zeros(w.announce.dimension, np.int64))
    return seal(msg, w.clerk_ids[j], w.clerks[j])


def noisy_round(w: World, devices: int, seed: int, rng: np.random.Generator, lazy: int = 0):
    """Devices 0..devices-1 and every clerk's noise in (the first `lazy` clerks add none), every clerk
    answers: (reveal, true device sum)."""
    xs, ints = inputs(w, devices, seed)
    server = w.server()
    participate(w, server, range(devices), xs)
    for j in range(w.announce.n):
        env = lazy_noise(w, j) if j < lazy else noise_participant(w, j).contribute(w.announce, NOW, rng=rng).envelope
        assert server.accept(env, NOW) == w.clerk_ids[j]
    assert (server.participant_count, server.noise_count) == (devices, w.announce.n)
    snap = server.snapshot()
    rec = Recipient(w.recipient, w.announce, snap.hash, snap.sealed_seeds, snap.noise_seeds)
    for j, (_, job) in enumerate(server.jobs(COORDINATOR, w.coordinator)):
        rec.add_result(w.clerk(j).handle_job(w.announce, job, w.registry, NOW).envelope, NOW)
    return rec.reveal(), ints.sum(axis=0)


def revealed_noise(w: World, trials: int, lazy: int) -> np.ndarray:
    rng = np.random.default_rng(2024 + lazy)
    noise = []
    for trial in range(trials):
        rev, truth = noisy_round(w, devices=6, seed=trial, rng=rng, lazy=lazy)
        assert rev.participants == 6 and rev.noise_participants == w.announce.n
        noise.append(rev.field_sum - truth)
    return np.concatenate(noise)


def test_honest_clerks_alone_add_variance_sigma_squared():
    """Over many in-process rounds in which t of the n clerks collude and add no noise, the revealed sum minus
    the devices' sum has variance sigma^2 (within 5 %): the n - t honest clerks provide it by themselves."""
    w = noisy_world(dimension=2048)
    noise = revealed_noise(w, trials=4, lazy=w.announce.t)
    assert np.count_nonzero(noise) > 0.9 * noise.size
    assert np.abs(noise).max() <= w.announce.noise_headroom
    assert abs(noise.mean()) < 4 * SIGMA / math.sqrt(noise.size)
    assert noise.var() == pytest.approx(SIGMA**2, rel=0.05)


def test_with_every_clerk_honest_the_noise_is_n_over_n_minus_t_sigma_squared():
    w = noisy_world(dimension=2048)
    n, t = w.announce.n, w.announce.t
    noise = revealed_noise(w, trials=2, lazy=0)
    assert noise.var() == pytest.approx(SIGMA**2 * n / (n - t), rel=0.05)


def test_each_clerk_share_has_variance_sigma_squared_over_n_minus_t():
    w = noisy_world(dimension=4096)
    share = clerk_share_variance(SIGMA, w.announce.n, w.announce.t)
    assert share == SIGMA**2 / 8
    from sda.noise import clerk_noise_share

    x = clerk_noise_share(20_000, SIGMA, w.announce.n, w.announce.t, np.random.default_rng(5))
    assert x.var() == pytest.approx(share, rel=0.05) and np.abs(x).max() <= share_bound(share)


def test_announce_with_too_small_headroom_for_clerk_noise_is_refused():
    w = noisy_world()
    need = clerk_noise_headroom(SIGMA, w.announce.n, w.announce.t)
    assert w.announce.noise_headroom == need
    kw = announce_kwargs(w.registry, w.announce.committee, aggregation_id="agg-small", k=5, t=2, dimension=7,
                         min_participants=5, noise_mechanism="skellam", noise_added_by="clerks", noise_sigma=SIGMA,
                         noise_headroom=need - 1)
    with pytest.raises(ParameterError, match="too small for clerk noise"):
        new_announce(**kw)
    # A coordinator that signs it anyway is refused by clerks and devices alike.
    bad = Announce(**{**{f: getattr(w.announce, f) for f in w.announce.SCHEMA}, "noise_headroom": need - 1})
    raw = seal(bad, COORDINATOR, w.coordinator)
    with pytest.raises(ParameterError, match="too small"):
        open_announce(raw, COORDINATOR, w.coordinator.public().sign_key)
    with pytest.raises(ParameterError, match="too small"):
        noise_participant(w, 0).contribute(bad, NOW)
    with pytest.raises(ParameterError, match="too small"):
        w.participant(0).check(bad, NOW)
    # Clerks add only Skellam noise, the one sda samples.
    with pytest.raises(ParameterError, match="skellam"):
        new_announce(**{**kw, "noise_mechanism": "discrete_gaussian", "noise_headroom": need})


def test_noise_participants_do_not_count_as_participants():
    """min_participants counts devices: clerk noise does not make a too-small round big enough, and
    max_participants leaves room for every clerk's noise."""
    w = noisy_world(min_participants=5, max_participants=5)
    server = w.server()
    xs, _ = inputs(w, 5)
    participate(w, server, range(4), xs[:4])
    for j in range(w.announce.n):
        server.accept(noise_participant(w, j).contribute(w.announce, NOW).envelope, NOW)
    with pytest.raises(ProtocolError, match="min_participants"):
        server.snapshot()
    participate(w, server, [4], xs[4:])
    assert server.participant_count == 5 and server.noise_count == 10
    assert len(server.snapshot().participants) == 5


def test_snapshot_without_every_clerks_noise_is_refused():
    w = noisy_world()
    server = w.server()
    xs, _ = inputs(w, 5)
    participate(w, server, range(5), xs)
    for j in range(w.announce.n - 1):
        server.accept(noise_participant(w, j).contribute(w.announce, NOW).envelope, NOW)
    with pytest.raises(ProtocolError, match="clerk noise missing"):
        server.snapshot()


def test_noise_participant_checks():
    w = noisy_world()
    done: set[str] = set()
    clerk = noise_participant(w, 0, contributed=done)
    env = clerk.contribute(w.announce, NOW).envelope
    assert done == {w.announce.aggregation_id}
    with pytest.raises(AlreadyProcessed):
        clerk.contribute(w.announce, NOW)
    server = w.server()
    server.accept(env, NOW)
    with pytest.raises(AlreadyProcessed):
        server.accept(env, NOW)
    # Not on the committee, or not a clerk-noise round: no noise.
    with pytest.raises(ProtocolError, match="committee"):
        NoiseParticipant("stranger", crypto.Identity.generate()).contribute(w.announce, NOW)
    plain = make_world()
    with pytest.raises(ProtocolError, match="not by clerks"):
        noise_participant(plain, 0).contribute(plain.announce, NOW)
    # A clerk's noise in a round without clerk noise is an unknown sender, like any stranger.
    from sda.errors import UnknownSender

    forged = noise_participant(w, 1).contribute(w.announce, NOW).envelope
    with pytest.raises(UnknownSender):
        plain.server().accept(forged, NOW)


def test_noise_participants_are_the_announced_committee_not_registry_devices():
    w = noisy_world()
    from sda.protocol.registry import Registry, RegistryEntry
    from sda.protocol.server import Server

    clash = Registry([*w.registry.entries, RegistryEntry(w.clerk_ids[0], bytes(32), bytes(32))])
    kw = announce_kwargs(clash, w.announce.committee, aggregation_id="agg-2", k=5, t=2, dimension=7,
                         min_participants=5, noise_mechanism="skellam", noise_added_by="clerks", noise_sigma=SIGMA,
                         noise_headroom=w.announce.noise_headroom)
    with pytest.raises(ProtocolError, match="also registered devices"):
        Server(new_announce(**kw), clash)


def test_capacity_counts_the_clerk_headroom():
    """N_max * value_range + the n clerk shares' headroom < p/2: a sigma whose headroom would overflow the
    field is refused like any other overflow."""
    w = noisy_world()
    huge = float(P) / 60  # its headroom fits the codec (< 2^31) but not the field (>= p/2)
    with pytest.raises(ParameterError, match="overflow"):
        noisy_world(sigma=huge)
    assert w.announce.noise_headroom < P // 2


# --- over Mosquitto ---------------------------------------------------------------------------


def test_round_with_clerk_noise_over_mosquitto(cluster: Cluster):
    """12 clerk processes add noise to the sum of 50 devices: the reveal is that sum plus noise, the noise is
    there and bounded by the headroom, and the participant count is the devices' (the clerks reported apart)."""
    cluster.start_coordinator()
    for name in cluster.clerk_names:
        cluster.start_clerk(name)
    cluster.start_fleet("fleetA", 0, 50)
    cluster.wait_registered(clerks=12, devices=50)
    _, t = default_thresholds(12)
    sigma, d = 30.0, 64
    headroom = clerk_noise_headroom(sigma, 12, t)
    cluster.request("round-noise", dimension=d, collect_s=30, results_s=30, noise_mechanism="skellam",
                    noise_added_by="clerks", noise_sigma=sigma, noise_headroom=headroom)
    row = cluster.wait_state("round-noise", ("revealed", "failed"), timeout=90)
    assert row.state == "revealed", row.error
    assert row.result["participants"] == 50
    assert row.result["noise_participants"] == 12
    noise = np.array(row.result["field_sum"]) - cluster.true_sum(d)
    assert np.count_nonzero(noise) > d // 2
    assert np.abs(noise).max() <= headroom
    assert 0.3 * sigma**2 < noise.var() < 3 * sigma**2  # 64 samples: the 5 % check is the in-process one
    assert len(cluster.store.participations("round-noise")) == 62
    # A round whose headroom cannot hold the clerks' noise is never announced.
    cluster.request("round-tight", dimension=d, collect_s=5, results_s=5, noise_mechanism="skellam",
                    noise_added_by="clerks", noise_sigma=sigma, noise_headroom=headroom // 2)
    row = cluster.wait_state("round-tight", ("failed",), timeout=30)
    assert "too small for clerk noise" in row.error and row.announce is None


# --- the learning rounds' side (assistant.learning.rounds) ------------------------------------------


def test_learning_round_config_with_clerk_noise_announces_the_clerks_headroom():
    from assistant.kws.head import Head
    from assistant.learning.errors import LearningError
    from assistant.learning.noise import NoiseMode
    from assistant.learning.rounds import LearningRoundConfig, aggregation_spec, round_spec

    head = Head(np.ones((12, 4)), np.zeros(4), np.ones(4), np.array(0.0), 3, 4)
    config = LearningRoundConfig(noise_mode=NoiseMode.CLERKS, committee_size=12, min_participants=5,
                                 max_participants=50)
    k, t = default_thresholds(12)
    spec = aggregation_spec(config, "learn.m.1", head, clip_norm=1.0)
    assert (spec.noise_added_by, spec.committee_size, spec.k, spec.t) == ("clerks", 12, k, t)
    assert spec.noise_headroom == clerk_noise_headroom(spec.noise_sigma, 12, t)  # assistant and sda agree
    # The devices add nothing themselves, so their clip range holds the gradient alone.
    participants = aggregation_spec(LearningRoundConfig(min_participants=5, max_participants=50), "learn.m.1",
                                    head, clip_norm=1.0)
    assert spec.clip_hi < participants.clip_hi
    assert round_spec(config, "learn.m.1", head.size, 1.0).variance == spec.noise_sigma**2
    with pytest.raises(LearningError, match="committee_size"):
        LearningRoundConfig(noise_mode=NoiseMode.CLERKS)
    with pytest.raises(LearningError, match="need DP noise"):
        LearningRoundConfig(noise_mode="none")
    with pytest.raises(LearningError, match="noise_mode"):
        LearningRoundConfig(noise_mode="everyone")

"""Attacks on a round, each against the defence that stops it (docs/threat-model.md lists which test shows
which guarantee; the others live next to the code they attack):

- a coordinator that pads a round with its own Sybil devices still faces the honest clerks' noise;
- a coordinator that shows another participant set to the clerks (split set) gets no second answer from a
  real clerk process, not even after that clerk is killed and restarted;
- a valid participation that arrives after its round closed changes nothing.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from cluster import Cluster, Spy
from protocol_fixtures import COORDINATOR, NOW, inputs, make_world, participate

from sda import crypto
from sda.errors import ProtocolError
from sda.mqtt import topics
from sda.noise import clerk_noise_headroom
from sda.protocol.messages import Announce, ClerkJob, ClerkResult, Envelope, Participation, seal
from sda.protocol.noise_participant import NoiseParticipant
from sda.protocol.participant import Participant, ParticipantPolicy, share_input
from sda.protocol.recipient import Recipient
from sda.protocol.snapshot import bitmap_bytes, decode_bitmap, encode_bitmap, snapshot_hash
from sda.services.participant import ParticipantClient, ParticipantConfig
from sda.simulation import default_thresholds

SIGMA = 40.0  # field units


# --- a Sybil-padded round -------------------------------------------------------------------------


def test_a_round_padded_with_sybils_still_hides_the_one_honest_input_behind_the_honest_clerks_noise():
    """The coordinator (also the recipient) registers 9 devices of its own, so the one honest device meets
    min_participants = 10 alone, and t clerks collude with it and add no noise. It subtracts its Sybils'
    inputs from the reveal: what is left is the honest input plus the n - t honest clerks' noise, variance
    sigma^2 (5 %). It cannot leave the honest clerks' noise out: a snapshot without it is refused."""
    w = make_world(devices=10, clerks=10, t=2, dimension=2048, min_participants=10, noise_mechanism="skellam",
                   noise_added_by="clerks", noise_sigma=SIGMA, noise_headroom=clerk_noise_headroom(SIGMA, 10, 2))
    a = w.announce
    rng = np.random.default_rng(11)
    colluding = range(a.t)
    residuals = []
    for trial in range(3):
        xs, ints = inputs(w, 10, seed=100 + trial)
        server = w.server()
        participate(w, server, range(10), xs)  # device 0 is honest, devices 1..9 are the server's
        envelopes = {}
        for j in range(a.n):
            if j in colluding:  # a share of zeros: noise of no one
                msg = share_input(a, w.clerk_ids[j], crypto.PairwiseKeys(w.clerks[j].exchange),
                                  np.zeros(a.dimension, np.int64))
                envelopes[j] = seal(msg, w.clerk_ids[j], w.clerks[j])
            else:
                envelopes[j] = NoiseParticipant(w.clerk_ids[j], w.clerks[j]).contribute(a, NOW, rng=rng).envelope
        # The server tries the round with only its colluding clerks' (empty) noise first.
        for j in colluding:
            server.accept(envelopes[j], NOW)
        with pytest.raises(ProtocolError, match="clerk noise missing"):
            server.snapshot()
        for j in range(a.t, a.n):
            server.accept(envelopes[j], NOW)
        snap = server.snapshot()
        rec = Recipient(w.recipient, a, snap.hash, snap.sealed_seeds, snap.noise_seeds)
        for j, (_, job) in enumerate(server.jobs(COORDINATOR, w.coordinator)):
            rec.add_result(w.clerk(j).handle_job(a, job, w.registry, NOW).envelope, NOW)
        revealed = rec.reveal()
        assert revealed.participants == 10 and revealed.noise_participants == a.n
        estimate = revealed.field_sum - ints[1:].sum(axis=0)  # the server's best view of device 0's input
        residuals.append(estimate - ints[0])
    noise = np.concatenate(residuals)
    assert np.count_nonzero(noise) > 0.9 * noise.size  # the noise is there, coordinate by coordinate
    assert noise.var() == pytest.approx(SIGMA**2, rel=0.05)  # and it is the announced sigma^2
    assert abs(noise.mean()) < 4 * SIGMA / np.sqrt(noise.size)


# --- split set and late participations, against real processes over Mosquitto -----------------------


@pytest.fixture
def small_cluster(tmp_path):
    c = Cluster(tmp_path, clerks=7, devices=12, extra_users=("late0",))
    try:
        yield c
    finally:
        c.close()


def _results(spy: Spy, agg: str) -> list[ClerkResult]:
    return [ClerkResult.decode(Envelope.decode(payload[1:]).payload)
            for _, payload in spy.captured(f"/agg/{agg}/result/")]


def _wait(check, timeout: float, what: str = "") -> bool:
    """Poll until check() holds: True; at the timeout, AssertionError naming `what`, or False without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    if what:
        raise AssertionError(f"timed out waiting for {what}")
    return False


def test_split_set_and_late_participations_are_refused_by_the_real_services(small_cluster):
    c = small_cluster
    c.start_coordinator()
    for name in c.clerk_names:
        c.start_clerk(name)
    c.start_fleet("fleet", 0, 12)
    late_id = crypto.Identity.generate()
    late = ParticipantClient(ParticipantConfig("late0", c.broker_config("late0"), "coordinator", c.coordinator_key),
                             late_id, provide=lambda a: None)  # registered, sits this round out
    late.start()
    spy = Spy(c)
    try:
        c.wait_registered(clerks=7, devices=13)
        k, t = default_thresholds(7)
        assert 2 * (k + t) - t > 7  # the committee is split-set safe
        # Closes as soon as the 12 fleet devices are in, long before its deadline: late0's participation below is
        # on time, and only the round's state refuses it.
        c.request("round-s", dimension=8, collect_s=120, results_s=30, min_participants=10, max_participants=12)
        row = c.wait_state("round-s", ("revealed", "failed"))
        assert row.state == "revealed", row.error
        assert row.result["participants"] == 12
        assert np.array_equal(np.array(row.result["values"]), c.true_sum(8))
        a = Announce.decode(Envelope.decode(row.announce).payload)
        honest = {r.clerk_id: r for r in _results(spy, "round-s")}
        assert len(honest) == 7

        # A valid participation of a registered device, made before the deadline but delivered after the
        # round closed: ignored.
        assert time.time() < a.participation_deadline - 60
        late_part = Participant("late0", late_id, ParticipantPolicy(min_participants=1)).participate(
            a, np.zeros(8), time.time())
        assert Participation.decode(Envelope.decode(late_part.envelope).payload).aggregation_id == "round-s"
        spy.publish(topics.participation("round-s", "late0"), b"\x00" + late_part.envelope)
        refused = f"rejected participation on {topics.participation('round-s', 'late0')}: round-s is not collecting"
        seen = _wait(lambda: refused in c.logs["coordinator"].read_text()
                       or c.store.participation_count("round-s") > 12, 20)
        assert c.store.participation_count("round-s") == 12
        assert seen and refused in c.logs["coordinator"].read_text(), \
            f"the coordinator did not refuse the late participation as not collecting:\n{c.log_tail('coordinator')}"
        assert c.store.aggregation("round-s").result == row.result
        # clerk0's genuine result, replayed through late0's own result topic: refused for its signer.
        genuine = next(p for t, p in spy.captured("/agg/round-s/result/clerk0"))
        spy.publish(topics.result("round-s", "late0"), genuine)
        c.wait_log("coordinator", "signed as 'clerk0' but published by 'late0'")

        # The coordinator now shows every clerk another participant set: the first 10 devices only.
        jobs = {}
        for topic, payload in spy.captured("/job/round-s"):
            job = ClerkJob.decode(Envelope.decode(payload[1:]).payload)
            members, _ = decode_bitmap(job.participants, a.registry_size)
            subset = np.sort(members)[:10]
            forged = ClerkJob("round-s", job.clerk_id,
                              snapshot_hash(a.digest(), bitmap_bytes(subset, a.registry_size)),
                              encode_bitmap(subset, a.registry_size), job.summed_shares)
            assert forged.snapshot_hash != job.snapshot_hash
            jobs[job.clerk_id] = (topic, payload, b"\x00" + seal(forged, "coordinator", c.identity))
        assert sorted(jobs) == sorted(c.clerk_names)

        def refusals(name: str) -> int:
            return c.logs[name].read_text().count("already processed for another participant set")

        for topic, _, forged in jobs.values():
            spy.publish(topic, forged)
        _wait(lambda: all(refusals(n) == 1 for n in c.clerk_names), 20, "every clerk to refuse the second set")

        # kill -9 one clerk and restart it: its refusal is on disk, not only in memory.
        c.kill("clerk0")
        c.start_clerk("clerk0")
        topic, original, forged = jobs["clerk0"]
        spy.publish(topic, forged)
        _wait(lambda: refusals("clerk0") == 2, 20, "the restarted clerk to refuse again")
        spy.publish(topic, original)  # the first job again: the same answer, byte for byte
        _wait(lambda: len([r for r in _results(spy, "round-s") if r.clerk_id == "clerk0"]) == 2, 20,
              "the restarted clerk to resend its result")
        for r in _results(spy, "round-s"):
            assert r == honest[r.clerk_id]  # no clerk ever answered for the second set

        assert c.procs["coordinator"].poll() is None
    finally:
        spy.close()
        late.stop()

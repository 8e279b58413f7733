"""The coordinator, clerks and devices as separate processes over a real Mosquitto broker."""

from __future__ import annotations

import numpy as np
import pytest
from cluster import Cluster


def start_all(c: Cluster) -> None:
    c.start_coordinator()
    for name in c.clerk_names:
        c.start_clerk(name)
    c.start_fleet("fleetA", 0, 25)
    c.start_fleet("fleetB", 25, 25)
    c.wait_registered(clerks=12, devices=50)


def test_round_over_mosquitto_reveals_the_true_sum(cluster):
    start_all(cluster)
    cluster.request("round-1", dimension=8, collect_s=30, results_s=30)
    row = cluster.wait_state("round-1", ("revealed", "failed"))
    assert row.state == "revealed", row.error
    assert row.result["participants"] == 50
    assert np.array_equal(np.array(row.result["values"]), cluster.true_sum(8))
    assert row.result["wrong_clerks"] == []
    shown = cluster.show("round-1")
    assert shown["state"] == "revealed" and shown["participations"] == 50 and shown["results"] == 12


def test_two_clerks_killed_mid_round_still_reveal_the_true_sum(cluster):
    start_all(cluster)
    cluster.request("round-k", dimension=8, collect_s=3, results_s=4, close_when_complete=False)
    cluster.wait_state("round-k", ("collecting",))
    cluster.kill("clerk3")
    cluster.kill("clerk7")
    row = cluster.wait_state("round-k", ("revealed", "failed"))
    assert row.state == "revealed", row.error
    assert set(row.result["clerks_used"]).isdisjoint({"clerk3", "clerk7"})
    assert len(row.result["clerks_used"]) == 10
    assert row.result["participants"] == 50
    assert np.array_equal(np.array(row.result["values"]), cluster.true_sum(8))
    # Tokens: each dead clerk slashed once (5 % of its 100) and cooled down; the others untouched.
    from sda.ledger import Ledger

    with Ledger(cluster.state / "ledger.db") as ledger:
        for dead in ("clerk3", "clerk7"):
            slashes = [e for e in ledger.history(dead) if e.kind == "slash"]
            assert len(slashes) == 1 and ledger.balance(dead).staked == 95
            assert not ledger.eligible(dead, 2) and ledger.standing(dead).cooldown_until == 4
        assert ledger.balance("clerk0").staked == 100
        assert ledger.locks("clerk0") == []  # unlocked once the round ended
    # The next round's committee leaves the cooling clerks out.
    cluster.request("round-k2", dimension=8, collect_s=3, results_s=4, close_when_complete=False)
    row2 = cluster.wait_state("round-k2", ("revealed", "failed"))
    assert row2.state == "revealed", row2.error
    assert set(row2.result["clerks_used"]).isdisjoint({"clerk3", "clerk7"})


def test_broker_restart_mid_round_loses_nothing(cluster):
    start_all(cluster)
    cluster.request("round-b", dimension=8, collect_s=4, results_s=15, close_when_complete=False)
    cluster.wait_state("round-b", ("collecting",))
    cluster.broker.restart()
    row = cluster.wait_state("round-b", ("revealed", "failed"), timeout=90)
    assert row.state == "revealed", row.error
    assert row.result["participants"] == 50
    assert np.array_equal(np.array(row.result["values"]), cluster.true_sum(8))


def test_coordinator_sigkilled_mid_round_resumes_after_restart(cluster):
    start_all(cluster)
    cluster.request("round-c", dimension=8, collect_s=4, results_s=15, close_when_complete=False)
    cluster.wait_state("round-c", ("collecting",))
    deadline_before = cluster.store.participation_count("round-c")
    cluster.kill("coordinator")  # SIGKILL: no chance to flush or say goodbye
    assert cluster.store.aggregation("round-c").state == "collecting"
    cluster.start_coordinator()
    row = cluster.wait_state("round-c", ("revealed", "failed"), timeout=90)
    assert row.state == "revealed", row.error
    assert row.result["participants"] == 50 >= deadline_before
    assert np.array_equal(np.array(row.result["values"]), cluster.true_sum(8))


def _cheat(svc_holder: list, recipient_key: bytes):
    """A tamper function: the clerk sends a validly sealed and signed, but wrong, share."""
    from sda import crypto
    from sda.protocol.clerk import result_info
    from sda.protocol.messages import ClerkResult, Envelope, seal

    def tamper(envelope: bytes) -> bytes:
        res = ClerkResult.decode(Envelope.decode(envelope).payload)
        svc = svc_holder[0]
        wrong = np.random.default_rng().integers(0, 2**31 - 1, 2).astype("<u4").tobytes()
        sealed = crypto.seal_to(recipient_key, wrong, result_info(res.aggregation_id, res.clerk_id, res.snapshot_hash))
        forged = ClerkResult(res.aggregation_id, res.clerk_id, res.snapshot_hash, sealed)
        return seal(forged, res.clerk_id, svc.identity)

    return tamper


def test_a_clerk_returning_a_wrong_share_is_corrected_and_named(cluster):
    from cluster import start_inprocess_clerk

    cluster.start_coordinator()
    for name in cluster.clerk_names[:-1]:
        cluster.start_clerk(name)
    holder: list = []
    holder.append(start_inprocess_clerk(cluster, "clerk11", _cheat(holder, cluster.identity.public().box_key)))
    cluster.start_fleet("fleetA", 0, 25)
    cluster.start_fleet("fleetB", 25, 25)
    cluster.wait_registered(clerks=12, devices=50)
    try:
        # d = 8 with k = 7 gives B = 2 blocks, the wrong share's length above.
        cluster.request("round-w", dimension=8, collect_s=30, results_s=30, reward_per_participant=2)
        row = cluster.wait_state("round-w", ("revealed", "failed"))
        import time

        deadline = time.monotonic() + 10
        while holder[0].stats.receipts < 3 and time.monotonic() < deadline:  # grant, stake, slash
            time.sleep(0.05)
        (available, staked), history = holder[0].wallet()
    finally:
        holder[0].stop()
    assert row.state == "revealed", row.error
    assert row.result["wrong_clerks"] == ["clerk11"]
    assert np.array_equal(np.array(row.result["values"]), cluster.true_sum(8))
    from sda.ledger import Ledger

    with Ledger(cluster.state / "ledger.db") as ledger:
        # the cheat: half its stake gone, excluded from every later committee
        assert ledger.balance("clerk11").staked == 50 and ledger.standing("clerk11").excluded
        # its own verified receipts say the same
        assert (available, staked) == (0, 50) and history[0]["kind"] == "slash"
        # honest clerks: paid exactly once, 2 tokens per participant processed
        for c in cluster.clerk_names[:-1]:
            rewards = [e for e in ledger.history(c) if e.kind == "reward"]
            assert len(rewards) == 1 and ledger.balance(c).available == 100
        assert ledger.total() == 0


def test_duplicated_and_replayed_messages_have_no_effect(cluster):
    from cluster import Spy

    start_all(cluster)
    spy = Spy(cluster)
    try:
        cluster.request("round-r1", dimension=8, collect_s=30, results_s=30)
        first = cluster.wait_state("round-r1", ("revealed", "failed"))
        assert first.state == "revealed", first.error
        old_parts = spy.captured("/agg/round-r1/participation/")
        old_results = spy.captured("/agg/round-r1/result/")
        assert len(old_parts) == 50 and len(old_results) == 12
        cluster.request("round-r2", dimension=8, collect_s=4, results_s=30, close_when_complete=False)
        cluster.wait_state("round-r2", ("collecting",))
        # Replays of a closed round, and the old bytes pushed into the new round's topics.
        for topic, payload in old_parts[:10] + old_results[:4]:
            spy.publish(topic, payload)
        for topic, payload in old_parts[:10]:
            spy.publish(topic.replace("round-r1", "round-r2"), payload)
        # Duplicates of the new round's own participations.
        import time

        time.sleep(1.0)
        for topic, payload in spy.captured("/agg/round-r2/participation/")[:20]:
            spy.publish(topic, payload)
            spy.publish(topic, payload)
        row = cluster.wait_state("round-r2", ("revealed", "failed"))
        assert row.state == "revealed", row.error
        assert row.result["participants"] == 50
        assert np.array_equal(np.array(row.result["values"]), cluster.true_sum(8))
        assert cluster.store.participation_count("round-r2") == 50
        # The first round's stored outcome is untouched by the replays of its results.
        assert cluster.store.aggregation("round-r1").result == first.result
        log = cluster.logs["coordinator"].read_text()
        assert "round-r1 is not collecting" in log or "is not waiting for results" in log
        assert "participation for 'round-r1', not 'round-r2'" in log
    finally:
        spy.close()


@pytest.fixture
def cluster_with_intruder(tmp_path):
    c = Cluster(tmp_path, clerks=12, devices=50, extra_users=("mal0",))
    try:
        yield c
    finally:
        c.close()


def test_bad_input_on_every_topic_is_rejected_and_the_next_round_succeeds(cluster_with_intruder):
    import os
    import time

    import paho.mqtt.client as mqtt

    from sda import crypto
    from sda.mqtt import topics
    from sda.protocol.messages import Announce, ClerkResult, Envelope, Participation, Registration, seal
    from sda.protocol.participant import Participant, ParticipantPolicy
    from sda.services.participant import ParticipantClient, ParticipantConfig

    c = cluster_with_intruder
    start_all(c)
    mal_id = crypto.Identity.generate()
    mal = ParticipantClient(ParticipantConfig("mal0", c.broker_config("mal0"), "coordinator", c.coordinator_key),
                            mal_id, provide=lambda a: None)
    mal.start()
    c.wait_registered(clerks=12, devices=51)
    raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mal0-raw", protocol=mqtt.MQTTv5)
    raw.username_pw_set("mal0", c.broker.passwords["mal0"])
    raw.connect(c.broker.host, c.broker.port)
    raw.loop_start()

    def send(topic: str, payload: bytes) -> None:
        # Frames as our transport sends them (0x00 = one whole message), except where noted.
        raw.publish(topic, b"\x00" + payload, qos=1).wait_for_publish(10)

    try:
        c.request("round-x", dimension=8, collect_s=4, results_s=30, close_when_complete=False)
        row = c.wait_state("round-x", ("collecting",))
        a = Announce.decode(Envelope.decode(row.announce).payload)
        part_topic = topics.participation("round-x", "mal0")
        send(part_topic, os.urandom(300))  # random bytes
        raw.publish(part_topic, os.urandom(50), qos=1).wait_for_publish(10)  # not even a frame
        good = Participant("mal0", mal_id, ParticipantPolicy(min_participants=1)).participate(
            a, np.zeros(8), time.time())
        msg = Participation.decode(Envelope.decode(good.envelope).payload)
        wrong_dim = Participation(msg.aggregation_id, "mal0", msg.padded_shares[:-4], msg.sealed_seed)
        send(part_topic, seal(wrong_dim, "mal0", mal_id))  # wrong dimension
        unknown = Participation("no-such-round", "mal0", msg.padded_shares, msg.sealed_seed)
        send(topics.participation("no-such-round", "mal0"), seal(unknown, "mal0", mal_id))  # unknown id
        send(part_topic, seal(msg, "mal0", crypto.Identity.generate()))  # forged signature
        send(part_topic, b"\x00" * (9 * 1024 * 1024))  # oversized
        res_topic = topics.result("round-x", "mal0")
        send(res_topic, os.urandom(200))
        forged_res = ClerkResult("round-x", "clerk0", bytes(32), os.urandom(64))
        other = crypto.Identity.generate()
        send(topics.registration("mal0"), os.urandom(100))
        pub = other.public()  # re-registration with other keys, validly self-signed
        send(topics.registration("mal0"), seal(Registration("mal0", "device", pub.sign_key, pub.box_key),
                                               "mal0", other))
        send(res_topic, seal(forged_res, "clerk0", crypto.Identity.generate()))  # another clerk's name
        row = c.wait_state("round-x", ("revealed", "failed"))
        assert row.state == "revealed", row.error
        assert row.result["participants"] == 50  # mal0 never got in
        assert np.array_equal(np.array(row.result["values"]), c.true_sum(8))
        log = c.logs["coordinator"].read_text()
        for needle in ("rejected participation", "rejected result", "rejected registration",
                       "unknown aggregation 'no-such-round'", "does not verify", "expected 96 bytes",
                       "signed as 'clerk0' but published by 'mal0'", "already registered with other keys",
                       "dropped a frame"):
            assert needle in log, needle
        assert c.procs["coordinator"].poll() is None
        c.request("round-y", dimension=8, collect_s=3, results_s=30, close_when_complete=False)
        row = c.wait_state("round-y", ("revealed", "failed"))
        assert row.state == "revealed", row.error
        assert np.array_equal(np.array(row.result["values"]), c.true_sum(8))
    finally:
        raw.loop_stop()
        raw.disconnect()
        mal.stop()


def test_a_failed_database_write_loses_no_participation(cluster):
    """The store fails once (a full disk, a lost database connection): nothing of that batch was
    acknowledged, the coordinator reconnects, the broker redelivers, the round is complete."""
    from sda.errors import StorageError
    from sda.services.coordinator import Coordinator, CoordinatorConfig
    from sda.services.storage import SqliteStore

    class FailsOnce(SqliteStore):
        failures = 0

        def add_participations(self, rows):
            if FailsOnce.failures == 0:
                FailsOnce.failures += 1
                raise StorageError("disk full (injected)")
            return super().add_participations(rows)

    coord = Coordinator(CoordinatorConfig(cluster.state, cluster.broker_config("coordinator"), grant_stake=100),
                        store=FailsOnce(cluster.state / "coordinator.db"))
    coord.start()
    try:
        for name in cluster.clerk_names:
            cluster.start_clerk(name)
        cluster.start_fleet("fleetA", 0, 25)
        cluster.start_fleet("fleetB", 25, 25)
        cluster.wait_registered(clerks=12, devices=50)
        cluster.request("round-f", dimension=8, collect_s=6, results_s=20, close_when_complete=False)
        row = cluster.wait_state("round-f", ("revealed", "failed"), timeout=90)
    finally:
        coord.stop()
    assert FailsOnce.failures == 1
    assert row.state == "revealed", row.error
    assert row.result["participants"] == 50
    assert np.array_equal(np.array(row.result["values"]), cluster.true_sum(8))

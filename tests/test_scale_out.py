"""Scale-out: the coordinator as two processes sharing one PostgreSQL, over a real Mosquitto.

The leader (`sda coordinator run --shared-group ingest --database postgresql://...`) runs the
lifecycle and also ingests; the worker (`--ingest-only --client-id coordinator-w1`) only validates
and stores participations. Both log in as the broker user `coordinator` with different client ids
and receive participations through the MQTT v5 shared subscription `$share/ingest/...`, so the
broker splits the devices between them; the leader takes its snapshot from the shared store.
"""

from __future__ import annotations

import re
import secrets
import signal
import time

import numpy as np
import pytest
from cluster import Cluster

from sda.mqtt import topics
from sda.mqtt.transport import BrokerConfig, Transport

WORKER = "coordinator-w1"
STOPPED = re.compile(r"coordinator stopped: (\d+) participations accepted, (\d+) duplicates, rejected (\{.*\})")


@pytest.fixture
def pg_cluster(tmp_path, postgres_dsn):
    c = Cluster(tmp_path, clerks=12, devices=50, database=postgres_dsn)
    try:
        yield c
    finally:
        c.close()


def _stopped_counts(c: Cluster, name: str) -> tuple[int, int, str]:
    """SIGTERM the process and read the counters it logs on the way out."""
    c.kill(name, signal.SIGTERM)
    m = STOPPED.search(c.logs[name].read_text(errors="replace"))
    assert m, f"{name} logged no stop line:\n{c.log_tail(name)}"
    return int(m.group(1)), int(m.group(2)), m.group(3)


def test_leader_and_ingest_worker_share_postgres_and_reveal_the_true_sum(pg_cluster):
    c = pg_cluster
    c.start_coordinator(shared_group="ingest")
    c.start_ingest_worker(WORKER, shared_group="ingest")
    for name in c.clerk_names:
        c.start_clerk(name)
    c.start_fleet("fleetA", 0, 25)
    c.start_fleet("fleetB", 25, 25)
    c.wait_registered(clerks=12, devices=50)

    c.request("round-s", dimension=8, collect_s=30, results_s=30)
    row = c.wait_state("round-s", ("revealed", "failed"))
    assert row.state == "revealed", row.error
    assert row.result["participants"] == 50
    assert np.array_equal(np.array(row.result["values"]), c.true_sum(8))
    assert row.result["wrong_clerks"] == []
    shown = c.show("round-s")  # `sda coordinator show --database postgresql://...`
    assert shown["state"] == "revealed" and shown["participations"] == 50 and shown["results"] == 12
    assert not (c.state / "coordinator.db").exists()  # nothing went to the default SQLite file

    assert "with MQTT 5" in c.logs[WORKER].read_text()  # shared subscriptions need v5
    worker, worker_dups, worker_rejected = _stopped_counts(c, WORKER)
    leader, leader_dups, leader_rejected = _stopped_counts(c, "coordinator")
    # The broker split the participations: each process stored some, together exactly the 50 rows
    # (an insert reports True once per row, whichever process made it).
    assert worker > 0 and leader > 0, (worker, leader)
    assert worker + leader == 50 == c.store.participation_count("round-s")
    assert worker_rejected == "{}" and leader_rejected == "{}"
    assert worker_dups + leader_dups == 0


class _Inbox:
    def __init__(self):
        self.topics: list[str] = []

    def __call__(self, topic, payload, retained, ack):
        self.topics.append(topic)  # list.append is atomic; readers copy the list
        ack()


def test_mosquitto_keeps_dealing_shared_messages_to_a_member_whose_session_is_offline(mosquitto):
    """Pins a Mosquitto 2.0 behaviour that shapes how workers are run: with persistent sessions
    (our transport's), a member of a shared subscription group that is disconnected keeps its turn
    in the round robin; its share of the participations is queued in its session until that client
    id connects again (or the session expires), not handed to the member that is online. So a
    crashed ingest worker must be restarted under the same client id."""
    b = mosquitto
    cfg = BrokerConfig(host=b.host, port=b.port, username="coordinator", password=b.passwords["coordinator"],
                       session_expiry_s=60)  # persistent, but not left for a week on the session's broker
    tag = secrets.token_hex(4)
    group, agg = f"g{tag}", f"pin-{tag}"
    leader_inbox, worker_inbox = _Inbox(), _Inbox()
    leader = Transport(f"leader-{tag}", cfg, leader_inbox, manual_ack=True)
    worker = Transport(f"worker-{tag}", cfg, worker_inbox, manual_ack=True)
    device = Transport(f"dev1-{tag}", BrokerConfig(host=b.host, port=b.port, username="dev1",
                                                   password=b.passwords["dev1"]), _Inbox())
    try:
        for t in (leader, worker, device):
            t.start()
        for t in (leader, worker):
            t.subscribe(topics.shared(group, topics.ALL_PARTICIPATIONS))
        deadline = time.monotonic() + 10
        while not (leader_inbox.topics and worker_inbox.topics):  # probes until both are in the group
            assert time.monotonic() < deadline, "the shared subscription never reached both members"
            assert device.wait_published(device.publish(topics.participation(f"{agg}-probe", "dev1"), b"p"))
            time.sleep(0.05)
        worker.stop()  # a clean disconnect: its session (and its place in the group) stays
        sent = [topics.participation(f"{agg}-{i}", "dev1") for i in range(10)]  # dev1 may write only its own
        for tp in sent:
            assert device.wait_published(device.publish(tp, b"p"))

        def received(inbox: _Inbox, n: int) -> list[str]:
            deadline = time.monotonic() + 10
            while len(got := [tp for tp in list(inbox.topics) if tp in sent]) < n and time.monotonic() < deadline:
                time.sleep(0.05)
            return got

        time.sleep(0.5)
        assert len(received(leader_inbox, 5)) == 5  # only every other message, though the worker is gone
        worker = Transport(f"worker-{tag}", cfg, worker_inbox, manual_ack=True)
        worker.start()
        assert sorted(received(worker_inbox, 5) + received(leader_inbox, 5)) == sorted(sent)  # the rest waited
    finally:
        for t in (leader, worker, device):
            t.stop()

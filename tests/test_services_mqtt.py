"""The coordinator, clerks and devices as separate processes over a real Mosquitto broker."""

from __future__ import annotations

import numpy as np
import pytest
from cluster import Cluster


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, clerks=12, devices=50)
    try:
        yield c
    finally:
        c.close()


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

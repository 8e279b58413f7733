"""The registry snapshot travels as signed, retained pages; clerks assemble them, and find an older
snapshot as a prefix of a newer one (the registry only grows)."""

from __future__ import annotations

import time

import numpy as np
from cluster import Spy

from sda import crypto
from sda.mqtt.transport import BrokerConfig
from sda.protocol.messages import RegistrySnapshot, seal
from sda.protocol.registry import Registry, RegistryEntry
from sda.services.clerk import ClerkConfig, ClerkService


def _registry(n: int) -> Registry:
    ids = [crypto.Identity.generate().public() for _ in range(n)]
    return Registry([RegistryEntry(f"d{i}", p.sign_key, p.box_key) for i, p in enumerate(ids)])


def test_clerk_assembles_pages_and_derives_older_snapshots_as_prefixes(tmp_path):
    coord = crypto.Identity.generate()
    svc = ClerkService(ClerkConfig("c0", tmp_path / "c0", BrokerConfig(), "coordinator", coord.public().sign_key))
    reg = _registry(10)
    entries = [(e.device_id, e.sign_key, e.box_key) for e in reg.entries]
    pages = [RegistrySnapshot("coordinator", reg.snapshot_hash, 10, i, 4, tuple(entries[i * 3 : i * 3 + 3]))
             for i in range(4)]
    for p in pages[:3]:
        svc._on_registry("t", seal(p, "coordinator", coord))
    assert svc._registry(reg.snapshot_hash, 10) is None  # one page still missing
    svc._on_registry("t", seal(pages[3], "coordinator", coord))
    assert svc._registry(reg.snapshot_hash, 10).snapshot_hash == reg.snapshot_hash
    older = Registry(reg.entries[:6])
    assert svc._registry(older.snapshot_hash, 6).entries == older.entries
    assert svc._registry(b"\x00" * 32, 6) is None
    forged = RegistrySnapshot("coordinator", reg.snapshot_hash, 10, 0, 4, tuple(entries[:3]))
    svc._on_registry("t", seal(forged, "coordinator", crypto.Identity.generate()))
    assert svc.stats.rejected["registry"] == 1
    svc.db.close()


def test_a_round_over_a_registry_of_many_pages(cluster, monkeypatch):
    import sda.services.coordinator as coordinator_module
    from sda.services.coordinator import Coordinator, CoordinatorConfig

    monkeypatch.setattr(coordinator_module, "REGISTRY_PAGE", 7)  # 50 devices -> 8 pages
    coord = Coordinator(CoordinatorConfig(cluster.state, cluster.broker_config("coordinator"), grant_stake=100))
    coord.start()
    try:
        for name in cluster.clerk_names:
            cluster.start_clerk(name)
        cluster.start_fleet("fleetA", 0, 25)
        cluster.start_fleet("fleetB", 25, 25)
        cluster.wait_registered(clerks=12, devices=50)
        spy = Spy(cluster)
        try:
            cluster.request("paged", dimension=8, collect_s=30, results_s=30)
            row = cluster.wait_state("paged", ("revealed", "failed"))
            # A finished round leaves nothing in the coordinator's memory, and a participation replayed into
            # it is refused without loading its announce back (the soak's coordinator grew by one per round).
            assert "paged" not in coord._announces and "paged" not in coord._jobs_sent_at
            topic, payload = spy.captured("/agg/paged/participation/")[0]
            spy.publish(topic, payload)
            deadline = time.monotonic() + 20
            while coord.stats.rejected["participation"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert coord.stats.rejected["participation"] == 1 and "paged" not in coord._announces
        finally:
            spy.close()
    finally:
        coord.stop()
    assert row.state == "revealed", row.error
    assert np.array_equal(np.array(row.result["values"]), cluster.true_sum(8))

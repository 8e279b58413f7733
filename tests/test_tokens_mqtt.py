"""Tokens over MQTT: `sda ledger` against a running coordinator, `sda committee verify`, and a
device that refuses an announce whose committee is not the draw."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
from cluster import Cluster, Spy


def sda(c: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sda.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=c.tmp)


def ledger(c: Cluster, clerk: str, *args: str) -> tuple[int, dict]:
    out = sda(c, "ledger", *args, "--credentials", str(c.tmp / f"{clerk}.yaml"),
              "--key", str(c.tmp / clerk / "clerk.key"), "--json")
    return out.returncode, (json.loads(out.stdout.splitlines()[-1]) if out.stdout.strip() else {"stderr": out.stderr})


def test_ledger_commands_and_committee_verification_against_a_live_coordinator(cluster):
    from sda.ledger import Ledger

    spy = Spy(cluster)
    try:
        cluster.start_coordinator(extra=("--device-reward", "3"))
        for name in cluster.clerk_names:
            cluster.start_clerk(name)
        cluster.start_fleet("fleetA", 0, 25)
        cluster.start_fleet("fleetB", 25, 25)
        cluster.wait_registered(clerks=12, devices=50)
        cluster.request("t-1", dimension=8, collect_s=30, results_s=30, reward_per_participant=1)
        row = cluster.wait_state("t-1", ("revealed",))
        assert np.array_equal(np.array(row.result["values"]), cluster.true_sum(8))
        time.sleep(0.5)
        with Ledger(cluster.state / "ledger.db") as book:  # contributing devices paid, once each
            assert all(book.balance(d).available == 3 for d in cluster.device_names)
            assert [e.kind for e in book.history("dev7")] == ["reward"]
        receipts = [p for t, p in spy.captured("/device/dev7/inbox")]
        assert len(receipts) == 1  # and told so, in a receipt it can verify
        from sda.ledger import verify_receipt

        assert verify_receipt(receipts[0][1:], "coordinator", cluster.coordinator_key, "dev7").available_after == 3

        rc, bal = ledger(cluster, "clerk0", "balance")
        assert rc == 0 and (bal["available"], bal["staked"]) == (50, 100), bal  # 1 token x 50 participants
        rc, hist = ledger(cluster, "clerk0", "history")
        assert rc == 0 and [e["kind"] for e in hist["entries"]][:1] == ["reward"]
        assert {e["kind"] for e in hist["entries"]} == {"mint", "stake", "reward"}
        rc, out = ledger(cluster, "clerk0", "unstake", "10")
        assert rc == 0 and (out["available"], out["staked"]) == (60, 90)
        rc, out = ledger(cluster, "clerk0", "stake", "1000")
        assert rc == 1 and out["error"] and (out["available"], out["staked"]) == (60, 90)  # refused, unchanged

        # While clerk1 sits on an unfinished committee its stake is locked.
        cluster.request("t-2", dimension=8, collect_s=30, results_s=30, close_when_complete=False)
        cluster.wait_state("t-2", ("collecting",))
        time.sleep(0.3)
        announce = [p for t, p in spy.captured("/agg/t-2/announce") if p][-1]
        pages = [p for t, p in spy.captured("/clerk_snapshot/") if p]
        rc, out = ledger(cluster, "clerk1", "unstake", "1")
        assert rc == 1 and "lock" in out["error"] and out["staked"] == 100

        # `sda committee verify` recomputes the draw from what was published.
        (cluster.tmp / "announce.bin").write_bytes(announce)
        (cluster.tmp / "page0.bin").write_bytes(pages[-1])
        key = cluster.coordinator_key.hex()
        ok = sda(cluster, "committee", "verify", "announce.bin", "--pages", "page0.bin", "--coordinator-key", key)
        assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stdout + ok.stderr
        bad = bytearray(announce)
        bad[len(bad) // 2] ^= 1
        (cluster.tmp / "tampered.bin").write_bytes(bytes(bad))
        no = sda(cluster, "committee", "verify", "tampered.bin", "--pages", "page0.bin", "--coordinator-key", key)
        assert no.returncode == 1 and "REFUSED" in no.stdout
    finally:
        spy.close()


def test_admin_mint_credits_the_party_in_the_coordinators_ledger(tmp_path):
    from sda.ledger import Ledger

    for amount in ("500", "7"):
        out = subprocess.run([sys.executable, "-m", "sda.cli", "admin", "mint", "clerk9", amount, "--state",
                              str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    with Ledger(tmp_path / "ledger.db") as book:
        assert book.balance("clerk9").available == 507 and book.supply() == 507
    bad = subprocess.run([sys.executable, "-m", "sda.cli", "admin", "mint", "clerk9", "0", "--state", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must be >= 1" in bad.stderr

"""bench/vs_flower.py against the real flwr: a tiny run checks its JSON contract.

flwr cannot be installed in the project's environment (docs/decisions.md), so the script runs the Flower
side in a venv of its own that it makes from PyPI on first use and caches in bench/.cache (about a minute
the first time; seconds afterwards). Without PyPI this test fails, with the script's message.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("device_cpu_s", "upload_bytes", "server_cpu_s")


@pytest.mark.slow
def test_vs_flower_runs_both_sides_and_reports_ours_over_flower():
    cmd = [sys.executable, str(ROOT / "bench" / "vs_flower.py"), "--json", "--devices", "12", "--dimension", "300"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"bench/vs_flower.py took more than {e.timeout} s; stderr:\n{e.stderr}") from e
    assert proc.returncode == 0, (
        f"bench/vs_flower.py exited {proc.returncode} (it needs PyPI the first time, to make its flwr venv);"
        f"\nstderr (tail):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(result) == ["devices_12"]
    setting = result["devices_12"]
    assert set(setting) == {"devices", "dimension", "dropout", "ours", "flower", "ratios"}
    assert (setting["devices"], setting["dimension"], setting["dropout"]) == (12, 300, 0.05)
    ours, flower = setting["ours"], setting["flower"]
    assert {"committee_n", "k", "t", "r", "participants", "clerks_dropped", "device_cpu_s", "upload_bytes",
            "server_cpu_s", "server_only_cpu_s", "clerk_cpu_s", "clerk_total_cpu_s", "correct",
            "wall_s"} <= set(ours)
    assert {"num_shares", "reconstruction_threshold", "participants", "dropped_after_share_keys",
            "device_cpu_s", "upload_bytes", "server_cpu_s", "correct", "wall_s"} <= set(flower)
    # Both sides really ran and aggregated correctly: flwr's SecAgg+ rebuilt the dropped device's masks.
    assert ours["correct"] is True and flower["correct"] is True
    assert flower["dropped_after_share_keys"] == 1 and flower["participants"] == 11
    assert set(setting["ratios"]) == set(MEASURED)
    for key in MEASURED:
        assert ours[key] > 0 and flower[key] > 0, key
        assert setting["ratios"][key] == pytest.approx(ours[key] / flower[key], rel=1e-3, abs=1e-4), key
    # ours' upload is at least the d field elements; flwr's masked vector alone is d 8-byte integers.
    assert ours["upload_bytes"] > 300 * 4 and flower["upload_bytes"] > 300 * 8
    assert "flwr 1.42.0" in proc.stderr

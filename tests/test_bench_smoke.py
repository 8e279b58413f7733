"""The benchmark must keep running: a tiny run of bench/sda_seed.py checks its JSON contract."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sda_seed_benchmark_prints_one_json_object_with_checked_results():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sda_seed.py"), "--json", "--settings", "small",
         "--participants", "400", "--e2e-participants", "120", "--participant-runs", "3"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    last = proc.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    small = result["small"]
    for key in ("participants", "clerks", "upload_bytes_per_participant", "participant_ms",
                "clerk_download_bytes", "clerk_cold_s", "clerk_warm_s", "server_snapshot_s",
                "recipient_reveal_s", "end_to_end_correct"):
        assert key in small, key
    assert small["participants"] == 400 and small["clerks"] == 24
    assert small["end_to_end_correct"] is True
    assert small["recipient_reveal_correct"] is True
    # n * B * 4 bytes of shares plus the sealed seed: the upload can be no smaller.
    assert small["upload_bytes_per_participant"] > 24 * 10 * 4 + 80

"""Smoke test of bench/fl_sim.py (issue 7's simulation) at tiny settings: the JSON it promises, FRRs that are
rates, epsilon within the budget, and that federated training without noise lowers the training loss on the
union of the owners' labels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

KEYS = ("devices", "rounds", "epsilon", "delta", "frr_base", "frr_federated", "frr_federated_no_noise", "frr_oracle",
        "frr_local_verifier", "gap_closed")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    sys.path.insert(0, str(BENCH))
    import fl_sim

    out = tmp_path_factory.mktemp("fl") / "fl.json"
    # no noise moves a tiny federation further per round, so the loss check sees a clear trend
    assert fl_sim.main(["--devices", "6", "--clips-per-device", "6", "--rounds", "4", "--negative-hours", "0.05",
                        "--background-hours", "0.05", "--oracle-steps", "4", "--server-lr", "1e-2", "--eval-every", "1",
                        "--png", str(out.with_suffix(".png")),
                        "--out", str(out)]) == 0
    return json.loads(out.read_text()), out.with_suffix(".png")


def test_keys_and_rates(result):
    r, png = result
    for k in KEYS:
        assert k in r, k
    assert r["devices"] == 6 and r["rounds"] == 4 and r["mqtt_rounds"] == [1, 4]
    for k in KEYS[4:9]:
        assert 0.0 <= r[k] <= 1.0, (k, r[k])
    for row in r["curves"]["federated"]:
        assert 0.0 <= row["frr"]["mean"] <= row["frr"]["worst_decile"] <= 1.0
    assert png.stat().st_size > 1000


def test_the_first_and_last_rounds_go_through_mosquitto(result):
    r, _ = result
    rows = r["curves"]["federated"]
    assert [row["aggregation"] for row in rows] == ["mosquitto", "in-process", "in-process", "mosquitto"]
    for row in (rows[0], rows[-1]):
        assert row["mqtt"]["participants"] == row["participants"] and row["mqtt"]["upload_bytes_median"] > 0


def test_epsilon_within_budget(result):
    r, _ = result
    assert 0 < r["epsilon"] <= 8.0 + 1e-9
    eps = [row["epsilon"] for row in r["curves"]["federated"]]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(r["epsilon"], rel=1e-6)
    assert all(row["epsilon"] is None for row in r["curves"]["federated_no_noise"])


def test_no_noise_lowers_the_loss_on_the_rows_the_devices_kept_at_the_start(result):
    r, _ = result
    losses = [row["base_rows_loss"] for row in r["curves"]["federated_no_noise"]]
    assert losses[-1] < losses[0]

"""bench/fl_mqtt.py: one secure aggregation over a real Mosquitto reveals exactly the sum of the inputs given.

Small (12 devices, d = 200, 4 clerks) so it stays a few seconds; the inputs are near the clip bound on both
sides so a clip or a rounding anywhere would show."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fl_mqtt import mqtt_sum

SCALE = 2.0**12


def inputs(n: int, d: int, bound: int) -> np.ndarray:
    v = np.random.default_rng(5).integers(-bound, bound + 1, (n, d), dtype=np.int64)
    v[0, :] = bound  # the extremes the clip range must hold
    v[1, :] = -bound
    return v


@pytest.mark.parametrize("noise", [None, 300.0])
def test_revealed_sum_is_exact(tmp_path, noise):
    values = inputs(12, 200, 5000)
    r = mqtt_sum(values, SCALE, 5000 / SCALE, min_participants=10, noise=noise, workdir=tmp_path, clerks=4,
                 progress=False, timeout_s=120)
    assert r.field_sum.dtype == np.int64
    np.testing.assert_array_equal(r.field_sum, values.sum(axis=0))
    assert r.participants == 12 and r.clerks == 4 and r.clerks_used >= 3
    assert len(r.upload_bytes) == 12 and min(r.upload_bytes) >= r.participation_bytes > 0
    assert r.coordinator_bytes_in > 12 * r.participation_bytes
    assert list(tmp_path.iterdir()) == []  # the round's directory is gone


def test_refuses_inputs_it_would_clip(tmp_path):
    values = inputs(12, 8, 5000)
    with pytest.raises(ValueError, match="clip"):
        mqtt_sum(values, SCALE, 4000 / SCALE, min_participants=10, workdir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="power of two"):
        mqtt_sum(values, 1000.0, 10.0, min_participants=10, workdir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="overflow"):  # 12 * 2^30 does not fit Z_p, p = 2^31 - 1
        mqtt_sum(values, SCALE, 2.0**30 / SCALE, min_participants=10, workdir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []

"""bench/dp_vs_rappor.py: its JSON contract, RAPPOR's estimator, and the central side's noise (small settings)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dp_vs_rappor", ROOT / "bench" / "dp_vs_rappor.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["dp_vs_rappor"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("dp_vs_rappor", None)


@pytest.fixture(scope="module")
def result(bench, tmp_path_factory):
    png = tmp_path_factory.mktemp("plot") / "plot.png"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert bench.main(["--json", "--epsilons", "1", "--ns", "1000", "100000", "--trials", "150",
                           "--clerks", "10", "--png", str(png)]) == 0
    assert png.stat().st_size > 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


def test_json_has_every_key(result):
    for key in ("rmse", "rappor_n_matching_central_1000", "epsilon", "delta", "buckets", "trials",
                "noise_variance", "noise_variance_released"):
        assert key in result
    assert set(result["rmse"]) == {"rappor", "central"}
    assert set(result["rmse"]["rappor"]["1"]) == {"1000", "100000"}
    assert result["delta"] == 1e-6 and result["trials"] == 150 and result["buckets"] == 16


def test_rappor_estimator_is_unbiased(bench):
    rng = np.random.default_rng(1)
    n, trials, eps = 5000, 4000, 1.0
    dist = bench.zipf_distribution(16)
    counts = rng.multinomial(n, dist)
    estimates = bench.rappor_estimates(np.tile(counts, (trials, 1)), eps, rng)
    se = np.sqrt(bench.rappor_variance(n, counts / n, eps) / trials)
    z = (estimates.mean(axis=0) - counts / n) / se
    assert np.all(np.abs(z) < 5), z


def test_rappor_probabilities_give_epsilon(bench):
    for eps in (0.5, 1.0, 2.0):
        p, q = bench.rappor_probabilities(eps)
        f = 2 * p
        assert math.isclose(q, 1 - f / 2)
        assert math.isclose(2 * math.log((1 - f / 2) / (f / 2)), eps)


def test_central_rmse_matches_the_released_noise(result):
    released = result["noise_variance_released"]["1"]
    assert released == pytest.approx(result["noise_variance"]["1"] * 10 / 8)  # 10 clerks, t = 2
    assert result["rmse"]["central"]["1"]["1000"] == pytest.approx(math.sqrt(released) / 1000, rel=0.1)


def test_calibrated_variance_spends_epsilon(bench):
    from assistant.learning.privacy import RoundCost, epsilon_of
    v = bench.calibrate_variance(1.0)
    spent = epsilon_of(RoundCost.skellam(math.sqrt(2), 2, v).rho, 1e-6)
    assert spent <= 1.0 and spent == pytest.approx(1.0, rel=1e-6)


def test_rappor_rmse_falls_as_one_over_sqrt_n(result):
    r = result["rmse"]["rappor"]["1"]
    assert r["1000"] / r["100000"] == pytest.approx(10, rel=0.15)
    assert result["rappor_fit"]["1"]["slope"] == pytest.approx(-0.5, abs=0.05)


def test_rappor_needs_far_more_devices_than_central(result):
    n_match = result["rappor_n_matching_central_1000"]["1"]
    assert n_match > 20_000
    assert result["rappor_check_at_matching_n"]["1"]["ratio_to_central_1000"] == pytest.approx(1, rel=0.15)

"""Tests of sda.encoding: fixed-point codec, stochastic rounding, centred decoding, capacity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sda import field as F
from sda.encoding import FixedPoint, centred, check_capacity
from sda.errors import EncodingError, ParameterError

P = F.P_DEFAULT
SETTINGS = settings(max_examples=50, deadline=None)


@st.composite
def codecs(draw):
    """A FixedPoint whose single-coordinate bound is far below p/2 for P = 2^31 - 1."""
    scale = draw(st.sampled_from([1.0, 3.0, 10.0, 100.0, 1000.0, 2.0**10, 12345.678]))
    lo = draw(st.floats(-100.0, 100.0, allow_nan=False))
    hi = draw(st.floats(-100.0, 100.0, allow_nan=False))
    lo, hi = min(lo, hi), max(lo, hi)
    return FixedPoint(scale=scale, lo=lo, hi=hi)


# ---------------------------------------------------------------------------------------------
# round trip and clipping
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(codecs(), st.data(), st.integers(0, 2**32))
def test_round_trip_within_one_unit_inside_clip_range(fp, data, seed):
    xs = data.draw(st.lists(st.floats(fp.lo, fp.hi, allow_nan=False), min_size=1, max_size=30))
    x = np.asarray(xs)
    v = fp.encode(x, P, np.random.default_rng(seed))
    assert v.dtype == np.int64 and v.shape == x.shape
    assert np.all((v >= 0) & (v < P))
    back = fp.decode_sum(v, P)
    assert np.all(np.abs(back - x) <= 1.0 / fp.scale * (1 + 1e-9))
    # |encoded value| never exceeds the advertised bound used by check_capacity
    assert np.all(np.abs(centred(v, P)) <= fp.max_abs_value)


def test_round_trip_negative_values_wrap_and_come_back():
    fp = FixedPoint(scale=100.0, lo=-5.0, hi=5.0)
    x = np.array([-5.0, -4.99, -1.234, -0.005, 0.0, 0.005, 1.5, 5.0])
    v = fp.encode(x, P, np.random.default_rng(7))
    # exactly representable values are encoded exactly; negatives wrap to p - |v|
    assert v[0] == P - 500 and v[4] == 0 and v[6] == 150 and v[7] == 500
    assert v[2] in (P - 123, P - 124)
    back = fp.decode_sum(v, P)
    assert np.all(np.abs(back - x) < 1.0 / fp.scale)
    assert back[0] == -5.0 and back[7] == 5.0


@SETTINGS
@given(codecs(), st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20),
       st.integers(0, 2**32))
def test_values_outside_range_are_clipped(fp, xs, seed):
    x = np.asarray(xs)
    clipped = np.clip(x, fp.lo, fp.hi)
    back = fp.decode_sum(fp.encode(x, P, np.random.default_rng(seed)), P)
    assert np.all(np.abs(back - clipped) <= 1.0 / fp.scale * (1 + 1e-9))


def test_clipping_exact_bounds():
    fp = FixedPoint(scale=10.0, lo=-2.0, hi=3.0)
    x = np.array([-1e9, -2.5, 3.5, 1e9, np.finfo(np.float64).max, -np.finfo(np.float64).max])
    v = fp.encode(x, P, np.random.default_rng(0))
    assert centred(v, P).tolist() == [-20, -20, 30, 30, 30, -20]


# ---------------------------------------------------------------------------------------------
# stochastic rounding is unbiased
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("x", "scale"), [(0.3, 1.0), (-0.3, 1.0), (0.27, 10.0), (2.75, 1.0)])
def test_stochastic_rounding_is_unbiased(x, scale):
    n = 200_000
    fp = FixedPoint(scale=scale, lo=-10.0, hi=10.0)
    v = centred(fp.encode(np.full(n, x), P, np.random.default_rng(12345)), P)
    y = x * scale
    # each encoding is floor(y) or floor(y) + 1 ...
    assert set(np.unique(v).tolist()) == {math.floor(y), math.floor(y) + 1}
    # ... and the mean is x: Bernoulli(frac) has sd sqrt(frac(1-frac)); allow 5 standard errors
    frac = y - math.floor(y)
    se = math.sqrt(frac * (1 - frac) / n) / scale
    tol = 5 * se
    mean = float(v.mean()) / scale
    assert abs(mean - x) < tol
    # power of the check: deterministic rounding (nearest, or floor) would be far outside it
    assert abs(round(y) / scale - x) > 10 * tol
    assert abs(math.floor(y) / scale - x) > 10 * tol


# ---------------------------------------------------------------------------------------------
# sums
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(codecs(), st.integers(1, 200), st.integers(1, 8), st.integers(0, 2**32))
def test_sum_of_encodings_decodes_to_sum_of_clipped_values(fp, n, d, seed):
    check_capacity(P, n, fp.max_abs_value)
    rng = np.random.default_rng(seed)
    span = max(abs(fp.lo), abs(fp.hi), 1.0)
    x = rng.uniform(-2 * span, 2 * span, size=(n, d))  # some clipped, some not
    enc = np.stack([fp.encode(row, P, rng) for row in x])
    total = fp.decode_sum(F.sum_mod(enc, P), P)
    ref = np.clip(x, fp.lo, fp.hi).sum(axis=0)
    assert np.all(np.abs(total - ref) <= n / fp.scale + 1e-9 * np.abs(ref).max())


def test_sum_of_negative_values_decodes_negative():
    fp = FixedPoint(scale=1000.0, lo=-1.0, hi=1.0)
    n = 1000
    x = np.full((n, 2), -0.75)
    x[:, 1] = -1.0
    enc = np.stack([fp.encode(row, P, np.random.default_rng(i)) for i, row in enumerate(x)])
    total = fp.decode_sum(F.sum_mod(enc, P), P)
    assert total[1] == -1000.0
    assert abs(total[0] + 750.0) <= n / fp.scale


# ---------------------------------------------------------------------------------------------
# check_capacity
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [13, 101, 65537, P])
def test_check_capacity_boundary_is_exact(p):
    largest_ok = (p - 1) // 2  # < p/2
    smallest_bad = largest_ok + 1  # >= p/2
    # through noise_headroom alone, and through N_max * value_range
    check_capacity(p, 0, 0, largest_ok)
    with pytest.raises(ParameterError):
        check_capacity(p, 0, 0, smallest_bad)
    check_capacity(p, 1, largest_ok, 0)
    with pytest.raises(ParameterError):
        check_capacity(p, 1, smallest_bad, 0)
    check_capacity(p, largest_ok, 1)
    with pytest.raises(ParameterError):
        check_capacity(p, smallest_bad, 1)


def test_check_capacity_boundary_mixed_terms():
    p = 101  # p/2 = 50.5
    check_capacity(p, 5, 9, 5)  # 45 + 5 = 50 accepted
    with pytest.raises(ParameterError):
        check_capacity(p, 5, 9, 6)  # 51 refused
    with pytest.raises(ParameterError):
        check_capacity(p, 6, 9, 0)  # 54 refused
    p = P  # p/2 = 2^30 - 0.5
    check_capacity(p, 2**15, 2**15 - 1, 2**15 - 1)  # 2^30 - 1 accepted
    with pytest.raises(ParameterError):
        check_capacity(p, 2**15, 2**15 - 1, 2**15)  # 2^30 refused
    with pytest.raises(ParameterError):
        check_capacity(p, 2**15, 2**15, 0)  # 2^30 refused


@pytest.mark.parametrize("p", [13, 101, 65537, P])
def test_largest_accepted_bound_decodes_without_wrap_around(p):
    """At the capacity limit the extreme sums +bound and -bound still decode exactly."""
    bound = (p - 1) // 2
    n_max, value = (bound, 1) if bound < 10_000 else (1000, bound // 1000)
    headroom = bound - n_max * value
    check_capacity(p, n_max, value, headroom)
    for sign in (1, -1):
        rows = np.full((n_max, 1), (sign * value) % p, np.int64)
        total = F.add(F.sum_mod(rows, p), (sign * headroom) % p, p)
        assert centred(total, p).tolist() == [sign * bound]
    # one more unit would wrap: +(bound + 1) decodes as a negative number
    assert centred(np.array([bound + 1]), p).tolist() == [bound + 1 - p]


@pytest.mark.parametrize(
    "args",
    [
        (-1, 1, 0), (1, -1, 0), (1, 1, -1),
        (1.0, 1, 0), (1, 1.0, 0), (1, 1, 0.0),
        (True, 1, 0), (1, True, 0), (1, 1, False),
        ("1", 1, 0), (None, 1, 0), (1, 1, None),
    ],
)
def test_check_capacity_refuses_negative_or_non_int(args):
    check_capacity(P, 1, 1, 0)  # the valid version is accepted
    with pytest.raises(ParameterError):
        check_capacity(P, *args)


# ---------------------------------------------------------------------------------------------
# FixedPoint parameters and inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [[np.nan], [0.0, np.nan, 1.0], [np.inf], [-np.inf, 0.0], [[0.0, np.nan]]]
)
def test_encode_refuses_nan_and_inf(bad):
    fp = FixedPoint(scale=10.0, lo=-1.0, hi=1.0)
    with pytest.raises(EncodingError):
        fp.encode(np.asarray(bad), P, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("scale", "lo", "hi"),
    [
        (0.0, -1.0, 1.0), (-1.0, -1.0, 1.0), (math.nan, -1.0, 1.0), (math.inf, -1.0, 1.0),
        (1.0, 1.0, -1.0), (1.0, math.nan, 1.0), (1.0, -1.0, math.nan),
        (1.0, -math.inf, 1.0), (1.0, -1.0, math.inf),
    ],
)
def test_fixed_point_refuses_bad_scale_or_bounds(scale, lo, hi):
    with pytest.raises(ParameterError):
        FixedPoint(scale=scale, lo=lo, hi=hi)


def test_fixed_point_accepts_degenerate_range_and_reports_bound():
    fp = FixedPoint(scale=10.0, lo=2.0, hi=2.0)
    v = fp.encode(np.array([-5.0, 2.0, 7.0]), P, np.random.default_rng(0))
    assert v.tolist() == [20, 20, 20]
    assert FixedPoint(scale=10.0, lo=-3.25, hi=1.0).max_abs_value == 33 + 1


# ---------------------------------------------------------------------------------------------
# centred
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [13, 101, 65537, P])
def test_centred_representatives(p):
    h = p // 2
    s = np.array([0, 1, h, h + 1, p - 1], np.int64)
    assert centred(s, p).tolist() == [0, 1, h, h + 1 - p, -1]


@SETTINGS
@given(st.sampled_from([13, 101, 65537, P]), st.lists(st.integers(0, 2**31 - 2), max_size=20))
def test_centred_is_the_representative_in_the_half_open_interval(p, values):
    s = np.asarray([v % p for v in values], np.int64)
    c = centred(s, p)
    assert np.all(np.mod(c, p) == s)
    assert np.all((-p / 2 < c) & (c <= p / 2))


@pytest.mark.parametrize("bad", [[-1], [13], [0, 14], [2**31]])
def test_centred_refuses_out_of_range(bad):
    with pytest.raises(EncodingError):
        centred(np.asarray(bad, np.int64), 13)

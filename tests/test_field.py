"""Tests of sda.field: Z_p arithmetic on int64 arrays against Python big-int references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sda import field as F
from sda.errors import ParameterError

PRIMES = (3, 13, 101, 65537, F.P_DEFAULT)
SETTINGS = settings(max_examples=50, deadline=None)


def _trial_division_is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % q for q in range(3, math.isqrt(n) + 1, 2))


@st.composite
def field_vectors(draw, count: int = 1, max_len: int = 20):
    """A prime p and `count` equal-length lists of elements of Z_p (edges included)."""
    p = draw(st.sampled_from(PRIMES))
    length = draw(st.integers(0, max_len))
    elem = st.one_of(st.integers(0, p - 1), st.sampled_from([0, 1, p - 2, p - 1]))
    vecs = [draw(st.lists(elem, min_size=length, max_size=length)) for _ in range(count)]
    return (p, *vecs)


def _arr(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


# ---------------------------------------------------------------------------------------------
# elementwise operations
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(field_vectors(count=2))
def test_add_sub_mul_match_python(data):
    p, a, b = data
    A, B = _arr(a), _arr(b)
    for name, got, ref in (
        ("add", F.add(A, B, p), [(x + y) % p for x, y in zip(a, b, strict=True)]),
        ("sub", F.sub(A, B, p), [(x - y) % p for x, y in zip(a, b, strict=True)]),
        ("mul", F.mul(A, B, p), [(x * y) % p for x, y in zip(a, b, strict=True)]),
    ):
        assert got.dtype == np.int64, name
        assert got.tolist() == ref, name


@SETTINGS
@given(field_vectors(count=1))
def test_neg_matches_python(data):
    p, a = data
    got = F.neg(_arr(a), p)
    assert got.tolist() == [(-x) % p for x in a]
    assert F.add(got, _arr(a), p).tolist() == [0] * len(a)


@SETTINGS
@given(field_vectors(count=1), st.one_of(st.integers(0, 70), st.integers(0, 2**70)))
def test_power_matches_python(data, e):
    p, a = data
    assert F.power(_arr(a), e, p).tolist() == [pow(x, e, p) for x in a]


def test_power_edge_cases():
    p = F.P_DEFAULT
    a = _arr([0, 1, 2, p - 1])
    assert F.power(a, 0, p).tolist() == [1, 1, 1, 1]  # pow(0, 0, p) == 1 in Python too
    assert F.power(a, 1, p).tolist() == a.tolist()
    assert F.power(a, p - 1, p).tolist() == [0, 1, 1, 1]  # Fermat
    with pytest.raises(ParameterError):
        F.power(a, -1, p)


@SETTINGS
@given(field_vectors(count=1))
def test_inv_matches_python(data):
    p, a = data
    a = [x for x in a if x != 0]
    got = F.inv(_arr(a), p)
    assert got.tolist() == [pow(x, -1, p) for x in a]
    assert F.mul(got, _arr(a), p).tolist() == [1] * len(a)


def test_inv_of_zero_raises():
    with pytest.raises(ZeroDivisionError):
        F.inv(_arr([3, 0, 5]), 13)
    with pytest.raises(ZeroDivisionError):
        F.inv(_arr([13]), 13)  # 13 reduces to 0


def test_worst_case_elementwise_values_do_not_overflow():
    p = F.P_DEFAULT
    a = np.full(1000, p - 1, np.int64)
    assert F.mul(a, a, p).tolist() == [((p - 1) ** 2) % p] * 1000 == [1] * 1000
    assert F.add(a, a, p).tolist() == [(2 * (p - 1)) % p] * 1000
    assert F.sub(np.zeros_like(a), a, p).tolist() == [1] * 1000


@SETTINGS
@given(st.sampled_from(PRIMES), st.lists(st.integers(-(2**62), 2**62), max_size=20))
def test_reduce_gives_canonical_representative(p, values):
    assert F.reduce(_arr(values), p).tolist() == [v % p for v in values]


# ---------------------------------------------------------------------------------------------
# sum_mod / prod_mod
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(st.sampled_from(PRIMES), st.integers(0, 50), st.integers(1, 5), st.integers(0, 2**32))
def test_sum_mod_matches_python(p, rows, cols, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, p, size=(rows, cols), dtype=np.int64)
    ref = [sum(int(a[i, j]) for i in range(rows)) % p for j in range(cols)]
    assert F.sum_mod(a, p).tolist() == ref
    assert F.sum_mod(a.T, p, axis=1).tolist() == ref


def test_sum_mod_many_rows_of_worst_case_values():
    p = F.P_DEFAULT
    rows = 300_000
    a = np.full((rows, 3), p - 1, np.int64)
    a[::7, 1] = 0
    a[:, 2] = np.arange(rows) % p
    ref = [
        (rows * (p - 1)) % p,
        ((rows - len(range(0, rows, 7))) * (p - 1)) % p,
        sum(range(rows)) % p,
    ]
    assert F.sum_mod(a, p).tolist() == ref
    # a 3-d array summed over its middle axis
    b = a.reshape(1000, 300, 3)
    got = F.sum_mod(b, p, axis=1)
    assert got.shape == (1000, 3)
    exp = [[sum(int(v) for v in b[i, :, j]) % p for j in range(3)] for i in (0, 1, 999)]
    assert got[[0, 1, 999]].tolist() == exp


def test_sum_mod_of_no_rows_is_zero():
    assert F.sum_mod(np.zeros((0, 4), np.int64), 101).tolist() == [0, 0, 0, 0]


@SETTINGS
@given(st.sampled_from(PRIMES), st.integers(1, 6), st.integers(0, 12), st.integers(0, 2**32))
def test_prod_mod_matches_python(p, rows, cols, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, p, size=(rows, cols), dtype=np.int64)
    ref = [math.prod(int(v) for v in a[i]) % p for i in range(rows)]
    assert F.prod_mod(a, p, axis=1).tolist() == ref
    assert F.prod_mod(a.T, p, axis=0).tolist() == ref


# ---------------------------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------------------------


def _matmul_ref(A: np.ndarray, X: np.ndarray, p: int) -> list:
    """Exact product with Python ints (object arrays never overflow)."""
    return ((A.astype(object) @ X.astype(object)) % p).tolist()


@SETTINGS
@given(
    st.sampled_from(PRIMES),
    st.integers(1, 6),
    st.integers(1, 60),
    st.integers(1, 6),
    st.booleans(),
    st.integers(0, 2**32),
)
def test_matmul_matches_python(p, a, r, b, vector, seed):
    rng = np.random.default_rng(seed)
    A = rng.integers(0, p, size=(a, r), dtype=np.int64)
    X = rng.integers(0, p, size=(r,) if vector else (r, b), dtype=np.int64)
    # force some worst-case entries
    A[0, :] = p - 1
    if vector:
        X[0] = p - 1
    else:
        X[:, 0] = p - 1
    got = F.matmul(A, X, p)
    assert got.shape == ((a,) if vector else (a, b))
    assert got.tolist() == _matmul_ref(A, X, p)


@pytest.mark.parametrize("r", [4096, F.MAX_INNER])
def test_matmul_worst_case_inner_dimension_does_not_overflow(r):
    p = F.P_DEFAULT
    A = np.full((2, r), p - 1, np.int64)
    X = np.full((r, 3), p - 1, np.int64)
    # sanity: the plain int64 product really overflows, so this input is a real stress
    exact = r * (p - 1) ** 2
    assert exact > 2**63 - 1
    naive = (A @ X) % p
    assert naive[0, 0] != exact % p
    got = F.matmul(A, X, p)
    assert got.tolist() == [[exact % p] * 3] * 2
    assert exact % p == r % p  # (p-1)^2 = 1 mod p


def test_matmul_max_inner_random_high_values():
    p = F.P_DEFAULT
    r = F.MAX_INNER
    rng = np.random.default_rng(1)
    A = rng.integers(p - 2**20, p, size=(2, r), dtype=np.int64)
    X = rng.integers(p - 2**20, p, size=(r, 2), dtype=np.int64)
    assert F.matmul(A, X, p).tolist() == _matmul_ref(A, X, p)
    assert F.matmul(A, X[:, 0], p).tolist() == _matmul_ref(A, X[:, 0], p)


def test_matmul_inner_dimension_above_limit_is_chunked_exactly():
    # 3 * 2^16 + 5 worst-case terms: one unchunked int64 product would overflow many times over.
    p = F.P_DEFAULT
    r = 3 * F.MAX_INNER + 5
    A = np.full((2, r), p - 1, np.int64)
    X = np.full((r, 1), p - 1, np.int64)
    expected = (r * (p - 1) * (p - 1)) % p
    assert F.matmul(A, X, p).tolist() == [[expected], [expected]]


# ---------------------------------------------------------------------------------------------
# check_modulus / is_prime
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [3, 5, 13, 101, 65537, 2**31 - 1, 2147483629])
def test_check_modulus_accepts_primes_below_2_31(p):
    F.check_modulus(p)


@pytest.mark.parametrize(
    "n",
    [
        4, 9, 15, 561, 1105, 65535, 2**31 - 3,
        2047,  # strong pseudoprime to base 2
        1373653,  # strong pseudoprime to bases 2, 3
        25326001,  # strong pseudoprime to bases 2, 3, 5
        46337 * 46327,  # product of two primes near sqrt(2^31)
    ],
)
def test_check_modulus_refuses_composites(n):
    assert n < 2**31
    assert not _trial_division_is_prime(n)
    with pytest.raises(ParameterError):
        F.check_modulus(n)


def test_check_modulus_refuses_p_at_least_2_31():
    big_prime = next(q for q in range(2**31, 2**31 + 200) if _trial_division_is_prime(q))
    assert F.is_prime(big_prime)  # refused for its size, not for compositeness
    for p in (2**31, big_prime, 2**61 - 1):
        with pytest.raises(ParameterError):
            F.check_modulus(p)


@pytest.mark.parametrize("p", [2, 1, 0, -1, -13])
def test_check_modulus_refuses_p_at_most_2(p):
    with pytest.raises(ParameterError):
        F.check_modulus(p)


@pytest.mark.parametrize("p", [13.0, "13", True, None, 2.0**31 - 1])
def test_check_modulus_refuses_non_int(p):
    with pytest.raises(ParameterError):
        F.check_modulus(p)


def test_is_prime_matches_trial_division_below_5000():
    assert [n for n in range(5000) if F.is_prime(n)] == [
        n for n in range(5000) if _trial_division_is_prime(n)
    ]


@SETTINGS
@given(st.integers(2**30, 2**31))
def test_is_prime_matches_trial_division_near_2_31(n):
    assert F.is_prime(n) == _trial_division_is_prime(n)


# ---------------------------------------------------------------------------------------------
# 4-byte wire format
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(field_vectors(count=1, max_len=50))
def test_uint32_bytes_round_trip(data):
    p, a = data
    raw = F.to_uint32_bytes(_arr(a))
    assert len(raw) == 4 * len(a)
    assert raw == b"".join(x.to_bytes(4, "little") for x in a)
    back = F.from_uint32_bytes(raw, p)
    assert back.dtype == np.int64
    assert back.tolist() == a


def test_uint32_bytes_layout_is_little_endian():
    assert F.to_uint32_bytes(_arr([1, 0x01020304])) == b"\x01\x00\x00\x00\x04\x03\x02\x01"
    assert F.from_uint32_bytes(b"", 13).tolist() == []


@pytest.mark.parametrize("length", [1, 2, 3, 5, 7, 4 * 10 + 1])
def test_from_uint32_bytes_refuses_bad_length(length):
    with pytest.raises(ValueError):
        F.from_uint32_bytes(b"\x00" * length, F.P_DEFAULT)


@pytest.mark.parametrize(
    ("p", "bad"), [(13, 13), (13, 2**32 - 1), (F.P_DEFAULT, F.P_DEFAULT), (F.P_DEFAULT, 2**31)]
)
def test_from_uint32_bytes_refuses_out_of_range(p, bad):
    raw = F.to_uint32_bytes(_arr([0, p - 1])) + bad.to_bytes(4, "little")
    assert F.from_uint32_bytes(raw[:8], p).tolist() == [0, p - 1]  # the in-range part is fine
    with pytest.raises(ValueError):
        F.from_uint32_bytes(raw, p)

"""Tests of sda.sharing: packed Shamir sharing, reconstruction and Berlekamp-Welch decoding."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from sda import field as F
from sda.errors import ParameterError, ReconstructionError
from sda.sharing import PackedShamir

P = F.P_DEFAULT
SETTINGS = settings(max_examples=40, deadline=None)
DECODE_SETTINGS = settings(max_examples=60, deadline=None)


def _random_inputs(scheme: PackedShamir, d: int, rng: np.random.Generator):
    secrets = rng.integers(0, scheme.p, size=d, dtype=np.int64)
    randomness = rng.integers(0, scheme.p, size=scheme.t * scheme.blocks(d), dtype=np.int64)
    return secrets, randomness


def _reference_share(scheme: PackedShamir, secrets, randomness) -> list[list[int]]:
    """Independent big-int Lagrange interpolation: f(beta_j) = secret, f(gamma_j) = random."""
    p, k, t = scheme.p, scheme.k, scheme.t
    B = scheme.blocks(len(secrets))
    padded = [int(s) for s in secrets] + [0] * (k * B - len(secrets))
    out = [[0] * B for _ in range(scheme.n)]
    for b in range(B):
        xs = [p - 1 - j for j in range(k)] + [p - 1 - k - j for j in range(t)]
        ys = padded[b * k : (b + 1) * k] + [int(v) for v in randomness[b * t : (b + 1) * t]]
        for i, a in enumerate(scheme.points):
            acc = 0
            for j, (xj, yj) in enumerate(zip(xs, ys, strict=True)):
                num = den = 1
                for m, xm in enumerate(xs):
                    if m != j:
                        num = num * (a - xm) % p
                        den = den * (xj - xm) % p
                acc = (acc + yj * num * pow(den, -1, p)) % p
            out[i][b] = acc
    return out


# ---------------------------------------------------------------------------------------------
# sharing and reconstruction
# ---------------------------------------------------------------------------------------------


def test_every_r_subset_reconstructs_small_scheme():
    scheme = PackedShamir(P, k=2, t=2, n=6)
    rng = np.random.default_rng(0)
    d = 5  # B = 3 blocks, the last one padded
    secrets, randomness = _random_inputs(scheme, d, rng)
    shares = scheme.share(secrets, randomness)
    assert shares.shape == (6, 3)
    assert shares.tolist() == _reference_share(scheme, secrets, randomness)
    subsets = list(itertools.combinations(range(6), scheme.r))
    assert len(subsets) == 15
    for subset in subsets:
        for order in (list(subset), list(reversed(subset))):
            assert scheme.reconstruct(order, shares[order], d).tolist() == secrets.tolist()
            dec = scheme.decode(np.asarray(order), shares[order], d)
            assert dec.secrets.tolist() == secrets.tolist()
            assert dec.wrong == ()


@SETTINGS
@given(
    st.sampled_from([101, 65537, P]),
    st.integers(1, 6),
    st.integers(0, 6),
    st.integers(0, 8),
    st.integers(1, 30),
    st.booleans(),
    st.integers(0, 2**32),
)
def test_random_subsets_reconstruct(p, k, t, extra, d, custom_points, seed):
    r = k + t
    n = r + extra
    rng = np.random.default_rng(seed)
    points = ()
    if custom_points:  # distinct points anywhere in [1, p - r - 1], including the top one
        points = (*random.Random(seed).sample(range(1, p - r - 1), n - 1), p - r - 1)
    scheme = PackedShamir(p, k, t, n, points)
    secrets, randomness = _random_inputs(scheme, d, rng)
    shares = scheme.share(secrets, randomness)
    assert shares.shape == (n, scheme.blocks(d))
    assert np.all((shares >= 0) & (shares < p))
    assert shares.tolist() == _reference_share(scheme, secrets, randomness)
    m = int(rng.integers(r, n + 1))
    order = rng.permutation(n)[:m]
    assert scheme.reconstruct(order, shares[order], d).tolist() == secrets.tolist()
    dec = scheme.decode(order.tolist(), shares[order], d)
    assert dec.secrets.tolist() == secrets.tolist()
    assert dec.wrong == ()


def test_reconstruct_uses_only_the_first_r_shares():
    scheme = PackedShamir(P, k=3, t=2, n=8)
    secrets, randomness = _random_inputs(scheme, 7, np.random.default_rng(3))
    shares = scheme.share(secrets, randomness)
    garbage = shares.copy()
    garbage[scheme.r :] = 12345
    assert scheme.reconstruct(range(8), garbage, 7).tolist() == secrets.tolist()


def test_zero_privacy_threshold_and_empty_padding():
    scheme = PackedShamir(13, k=3, t=0, n=4)
    shares = scheme.share(np.array([1, 2, 3, 4]), np.zeros(0, np.int64))
    assert shares.shape == (4, 2)
    assert scheme.reconstruct([3, 1, 0], shares[[3, 1, 0]], 4).tolist() == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# error correction
# ---------------------------------------------------------------------------------------------


@st.composite
def decode_cases(draw, min_redundancy: int = 0):
    k = draw(st.integers(1, 3))
    t = draw(st.integers(0, 3))
    r = k + t
    n = draw(st.integers(r + min_redundancy, r + 9))
    m = draw(st.integers(r + min_redundancy, n))
    d = draw(st.integers(1, 4 * k))
    seed = draw(st.integers(0, 2**32))
    return PackedShamir(P, k, t, n), m, d, seed


def _corrupt(shares: np.ndarray, positions, p: int, rng: np.random.Generator) -> np.ndarray:
    """Add a nonzero offset to a random nonempty set of blocks of each given row."""
    out = shares.copy()
    B = shares.shape[1]
    for pos in positions:
        mask = rng.random(B) < 0.5
        mask[rng.integers(B)] = True
        offsets = rng.integers(1, p, size=B, dtype=np.int64)
        out[pos] = np.where(mask, (out[pos] + offsets) % p, out[pos])
        assert not np.array_equal(out[pos], shares[pos])
    return out


@DECODE_SETTINGS
@given(decode_cases(), st.data())
def test_decode_corrects_up_to_half_the_redundancy(case, data):
    scheme, m, d, seed = case
    rng = np.random.default_rng(seed)
    secrets, randomness = _random_inputs(scheme, d, rng)
    shares = scheme.share(secrets, randomness)
    order = rng.permutation(scheme.n)[:m]  # positions in the list differ from party indices
    limit = (m - scheme.r) // 2
    n_err = data.draw(st.integers(0, limit), label="n_err")
    positions = sorted(rng.choice(m, size=n_err, replace=False).tolist())
    given_shares = _corrupt(shares[order], positions, scheme.p, rng)
    dec = scheme.decode(order, given_shares, d)
    assert dec.secrets.tolist() == secrets.tolist()
    assert dec.wrong == tuple(positions)


def test_decode_names_positions_not_party_indices_and_handles_partial_blocks():
    scheme = PackedShamir(P, k=2, t=1, n=9)  # r = 3, m = 9 -> corrects 3
    rng = np.random.default_rng(11)
    d = 8  # B = 4
    secrets, randomness = _random_inputs(scheme, d, rng)
    shares = scheme.share(secrets, randomness)
    order = [8, 2, 5, 0, 7, 1, 3, 6, 4]
    bad = shares[order].copy()
    bad[0, 3] = (bad[0, 3] + 1) % P  # party 8, last block only
    bad[4, 0] = (bad[4, 0] + P - 1) % P  # party 7, first block only
    bad[6, 1:3] = (bad[6, 1:3] + 99) % P  # party 3, two middle blocks
    dec = scheme.decode(order, bad, d)
    assert dec.secrets.tolist() == secrets.tolist()
    assert dec.wrong == (0, 4, 6)


@DECODE_SETTINGS
@given(decode_cases(min_redundancy=1))
def test_decode_refuses_one_error_too_many(case):
    scheme, m, d, seed = case
    rng = np.random.default_rng(seed)
    secrets, randomness = _random_inputs(scheme, d, rng)
    shares = scheme.share(secrets, randomness)
    order = rng.permutation(scheme.n)[:m]
    n_err = (m - scheme.r) // 2 + 1
    positions = rng.choice(m, size=n_err, replace=False).tolist()
    given_shares = _corrupt(shares[order], positions, scheme.p, rng)
    # With random errors over p = 2^31 - 1, landing within the correction radius of another
    # codeword has probability about m / p, so decode must refuse rather than return anything
    # (returning different secrets would be a silent wrong sum; returning the right secrets
    # is impossible because it cannot name all n_err > limit wrong shares).
    with pytest.raises(ReconstructionError):
        scheme.decode(order, given_shares, d)


def test_decode_with_no_redundancy_returns_without_naming_anyone():
    scheme = PackedShamir(P, k=2, t=2, n=6)
    secrets, randomness = _random_inputs(scheme, 6, np.random.default_rng(5))
    shares = scheme.share(secrets, randomness)
    order = [5, 0, 3, 2]
    dec = scheme.decode(order, shares[order], 6)
    assert dec.wrong == ()
    assert dec.secrets.tolist() == secrets.tolist()
    # a wrong share cannot be detected with m == r: still returns, names nobody
    bad = shares[order].copy()
    bad[1, 0] = (bad[1, 0] + 1) % P
    dec = scheme.decode(order, bad, 6)
    assert dec.wrong == ()
    assert dec.secrets.tolist() != secrets.tolist()


def test_max_errors_limits_correction():
    scheme = PackedShamir(P, k=1, t=1, n=6)  # m = 6, r = 2 -> corrects 2
    secrets, randomness = _random_inputs(scheme, 3, np.random.default_rng(8))
    shares = scheme.share(secrets, randomness)
    bad = shares.copy()
    bad[[1, 4], 0] = (bad[[1, 4], 0] + 7) % P
    assert scheme.decode(range(6), bad, 3).wrong == (1, 4)
    assert scheme.decode(range(6), bad, 3, max_errors=5).wrong == (1, 4)  # capped at 2
    with pytest.raises(ReconstructionError):
        scheme.decode(range(6), bad, 3, max_errors=1)
    with pytest.raises(ReconstructionError):
        scheme.decode(range(6), bad, 3, max_errors=0)
    with pytest.raises(ParameterError):
        scheme.decode(range(6), shares, 3, max_errors=-1)


def test_fewer_than_r_shares_raises():
    scheme = PackedShamir(P, k=2, t=2, n=6)
    secrets, randomness = _random_inputs(scheme, 4, np.random.default_rng(2))
    shares = scheme.share(secrets, randomness)
    for m in range(scheme.r):
        idx = list(range(m))
        with pytest.raises(ReconstructionError):
            scheme.reconstruct(idx, shares[idx], 4)
        with pytest.raises(ReconstructionError):
            scheme.decode(idx, shares[idx], 4)


def test_decode_corrects_errors_in_a_vector_of_more_than_2_16_blocks():
    """decode's error-locating step must work for any vector length that share/reconstruct
    accept. It mixes the B blocks with F.matmul(shares, coeffs), whose inner dimension is B and
    is capped at 2^16, so a correctable error in a long vector raises ParameterError instead."""
    scheme = PackedShamir(P, k=1, t=1, n=4)  # r = 2, m = 4 -> corrects 1
    d = F.MAX_INNER + 1  # B = 65537 blocks
    secrets, randomness = _random_inputs(scheme, d, np.random.default_rng(4))
    shares = scheme.share(secrets, randomness)
    assert scheme.reconstruct([0, 1], shares[:2], d).tolist() == secrets.tolist()
    assert scheme.decode(range(4), shares, d).wrong == ()  # consistent: fine
    bad = shares.copy()
    bad[2, 17] = (bad[2, 17] + 1) % P
    dec = scheme.decode(range(4), bad, d)
    assert dec.wrong == (2,)
    assert np.array_equal(dec.secrets, secrets)


# ---------------------------------------------------------------------------------------------
# privacy: any t shares are uniform and independent of the secrets
# ---------------------------------------------------------------------------------------------


def _many_sharings(scheme: PackedShamir, secret, count: int, randomness) -> np.ndarray:
    """(n, count): `count` independent sharings of one fixed k-vector, in one call."""
    secrets = np.tile(np.asarray(secret, np.int64), count)
    return scheme.share(secrets, randomness)


def test_t_shares_of_a_fixed_secret_are_uniform():
    p, count = 13, 20_000
    scheme = PackedShamir(p, k=2, t=2, n=5)
    rng = np.random.default_rng(2024)
    uniform = rng.integers(0, p, size=scheme.t * count, dtype=np.int64)
    shares = _many_sharings(scheme, [7, 3], count, uniform)
    assert shares.shape == (5, count)

    pair = np.bincount(shares[1] * p + shares[3], minlength=p**2)
    assert pair.size == 169
    assert chisquare(pair).pvalue > 0.001

    # control 1 (power): t + 1 = 3 shares of the same sharings are far from uniform over 13^3
    # cells; with the secrets fixed they are a function of the 2 random values (<= 169 cells).
    triple = np.bincount((shares[1] * p + shares[3]) * p + shares[4], minlength=p**3)
    assert np.count_nonzero(triple) <= p**2
    assert chisquare(triple).pvalue < 1e-12

    # control 2 (power): the same 2 shares without fresh randomness are a constant
    fixed = _many_sharings(scheme, [7, 3], count, np.zeros(scheme.t * count, np.int64))
    pair0 = np.bincount(fixed[1] * p + fixed[3], minlength=p**2)
    assert np.count_nonzero(pair0) == 1
    assert chisquare(pair0).pvalue < 1e-12


def test_t_shares_are_a_bijection_of_the_randomness():
    """Exact privacy for p = 13: for every secret and every t-set of parties, the t shares run
    over all p^t values exactly once as the randomness does, so they reveal nothing."""
    p = 13
    scheme = PackedShamir(p, k=2, t=2, n=5)
    grid = np.array(list(itertools.product(range(p), repeat=2)), np.int64).reshape(-1)
    for secret in ([0, 0], [7, 3], [12, 1]):
        shares = _many_sharings(scheme, secret, p**2, grid)
        for a, b in itertools.combinations(range(5), 2):
            cells = shares[a] * p + shares[b]
            assert sorted(cells.tolist()) == list(range(p**2)), (secret, a, b)


# ---------------------------------------------------------------------------------------------
# linearity
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(
    st.sampled_from([13, 101, 65537, P]),
    st.integers(1, 4),
    st.integers(0, 4),
    st.integers(0, 4),
    st.integers(1, 20),
    st.integers(1, 12),
    st.integers(0, 2**32),
)
def test_shares_of_a_sum_are_the_sum_of_shares(p, k, t, extra, d, parties, seed):
    assume(2 * (k + t) + extra <= p - 1)  # default points 1..n must stay below p - r
    scheme = PackedShamir(p, k, t, k + t + extra)
    rng = np.random.default_rng(seed)
    inputs = [_random_inputs(scheme, d, rng) for _ in range(parties)]
    summed = F.sum_mod(np.stack([scheme.share(s, r) for s, r in inputs]), p)
    total_s = F.sum_mod(np.stack([s for s, _ in inputs]), p)
    total_r = F.sum_mod(np.stack([r for _, r in inputs]), p)
    assert summed.tolist() == scheme.share(total_s, total_r).tolist()
    # and the summed shares reconstruct the sum of the secrets
    order = rng.permutation(scheme.n)
    assert scheme.decode(order, summed[order], d).secrets.tolist() == total_s.tolist()
    c = int(rng.integers(0, p))
    s0, r0 = inputs[0]
    assert F.mul(scheme.share(s0, r0), c, p).tolist() == scheme.share(
        F.mul(s0, c, p), F.mul(r0, c, p)
    ).tolist()


# ---------------------------------------------------------------------------------------------
# parameter validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(p=P, k=2, t=2, n=3),  # n < r
        dict(p=P, k=0, t=2, n=5),  # k < 1
        dict(p=P, k=-1, t=2, n=5),
        dict(p=P, k=2, t=-1, n=5),  # t < 0
        dict(p=P, k=2.0, t=1, n=5),  # non-int
        dict(p=P, k=2, t=True, n=5),
        dict(p=P, k=2, t=1, n="5"),
        dict(p=15, k=1, t=1, n=3),  # composite modulus
        dict(p=2**31, k=1, t=1, n=3),
        dict(p=P, k=1, t=1, n=3, points=(1, 1, 2)),  # duplicate points
        dict(p=P, k=1, t=1, n=3, points=(1, 2)),  # wrong number of points
        dict(p=P, k=1, t=1, n=3, points=(0, 1, 2)),  # below 1
        dict(p=P, k=1, t=1, n=3, points=(-1, 1, 2)),
        dict(p=101, k=1, t=1, n=3, points=(1, 2, 101 - 2)),  # p - r collides with a gamma
        dict(p=101, k=1, t=1, n=3, points=(1, 2, 100)),  # collides with a beta
        dict(p=101, k=1, t=1, n=3, points=(1, 2, 101)),
        dict(p=P, k=1, t=1, n=3, points=(1.0, 2, 3)),  # non-int point
        dict(p=13, k=2, t=2, n=9),  # default points 1..9 exceed p - r - 1 = 8
    ],
)
def test_invalid_scheme_parameters_are_rejected(kwargs):
    with pytest.raises(ParameterError):
        PackedShamir(**kwargs)


def test_boundary_points_are_accepted_and_work():
    p = 101
    scheme = PackedShamir(p, k=2, t=2, n=8)
    top = p - scheme.r - 1
    edge = PackedShamir(p, k=2, t=2, n=5, points=(top, 1, 50, top - 1, 2))
    PackedShamir(13, k=2, t=2, n=8)  # 1..8 with top = 8 is still fine
    for sch in (scheme, edge):
        secrets, randomness = _random_inputs(sch, 3, np.random.default_rng(9))
        shares = sch.share(secrets, randomness)
        assert shares.tolist() == _reference_share(sch, secrets, randomness)
        for subset in itertools.combinations(range(sch.n), sch.r):
            assert sch.reconstruct(subset, shares[list(subset)], 3).tolist() == secrets.tolist()


def test_invalid_share_and_reconstruct_arguments_are_rejected():
    scheme = PackedShamir(P, k=2, t=2, n=6)
    secrets, randomness = _random_inputs(scheme, 5, np.random.default_rng(1))  # B = 3
    shares = scheme.share(secrets, randomness)
    for bad in (randomness[:-1], np.append(randomness, 1), randomness.reshape(3, 2),
                np.zeros(0, np.int64)):
        with pytest.raises(ParameterError):
            scheme.share(secrets, bad)
    for fn in (scheme.reconstruct, scheme.decode):
        with pytest.raises(ParameterError):  # duplicate indices
            fn([0, 1, 2, 2], shares[[0, 1, 2, 2]], 5)
        with pytest.raises(ParameterError):  # duplicate indices among more than r
            fn([0, 1, 2, 3, 0], shares[[0, 1, 2, 3, 0]], 5)
        with pytest.raises(ParameterError):  # index out of range
            fn([0, 1, 2, 6], shares[[0, 1, 2, 3]], 5)
        with pytest.raises(ParameterError):
            fn([-1, 1, 2, 3], shares[[0, 1, 2, 3]], 5)
        with pytest.raises(ParameterError):  # shares shape does not match d
            fn([0, 1, 2, 3], shares[[0, 1, 2, 3], :2], 5)
        with pytest.raises(ParameterError):  # shares for fewer rows than indices
            fn([0, 1, 2, 3, 4], shares[[0, 1, 2, 3]], 5)
        with pytest.raises(ParameterError):  # 1-d shares
            fn([0, 1, 2, 3], shares[0, :4], 5)

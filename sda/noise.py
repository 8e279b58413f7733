"""Bounded Skellam noise for distributed differential privacy (DESIGN §3, "Noise"); numpy, no I/O.

All variances are in field units (the fixed-point scale times the value). Skellam noise,
Sk(mu/2, mu/2) = Poisson(mu/2) - Poisson(mu/2) with variance mu, is integer-valued, so it goes through
Z_p unchanged, and it is closed under sums, so independent shares of variance mu/m add up to exactly Sk
with variance mu (Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021).

Each share is truncated at a bound h (coordinates beyond it are drawn again), so the total noise is
bounded and the capacity check (sda.encoding.check_capacity) can make wrap-around impossible rather than
unlikely. h is the smallest integer whose Chernoff tail bound is <= 2^-80 per coordinate, so truncation
moves the sum's distribution by at most (shares * d * 2^-80) in total variation.

Clerk noise: each of the n clerks of a committee adds sigma^2 / (n - t) as an extra noise participant,
so the n - t clerks that are honest under the threat model (at most t collude) provide sigma^2 alone.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ParameterError

#: Per-coordinate probability that an untruncated share would exceed its bound.
TAIL = 2.0**-80
#: Redraws of out-of-bound coordinates before giving up (each round leaves ~TAIL of them).
_MAX_REDRAWS = 64


def skellam(shape: int | tuple[int, ...], variance: float, rng: np.random.Generator) -> np.ndarray:
    """Symmetric Skellam noise of `variance` (>= 0, field units^2): int64 array of `shape`."""
    if not math.isfinite(variance) or not variance >= 0:
        raise ParameterError(f"noise variance must be finite and >= 0, got {variance!r}")
    lam = variance / 2.0
    return rng.poisson(lam, shape).astype(np.int64) - rng.poisson(lam, shape).astype(np.int64)


def _log_tail(variance: float, a: float) -> float:
    """log of the Chernoff bound on P(X >= a) for X ~ Skellam of `variance`: its MGF is
    exp(variance (cosh t - 1)), minimised at t = asinh(a / variance)."""
    v = variance
    return a * a / (math.hypot(v, a) + v) - a * math.asinh(a / v)  # sqrt(v^2+a^2) - v, without cancellation


def skellam_tail(variance: float, bound: int) -> float:
    """An upper bound on P(|X| > bound) for X ~ Skellam of `variance` (two-sided Chernoff)."""
    if variance == 0:
        return 0.0
    return min(1.0, 2.0 * math.exp(_log_tail(variance, bound + 1)))


def share_bound(variance: float, tail: float = TAIL) -> int:
    """The smallest h >= 0 with skellam_tail(variance, h) <= tail: the truncation bound of one share."""
    if not math.isfinite(variance) or not variance >= 0:
        raise ParameterError(f"noise variance must be finite and >= 0, got {variance!r}")
    if variance == 0:
        return 0
    target = math.log(tail / 2.0)
    hi = max(1, math.ceil(math.sqrt(variance)))
    while _log_tail(variance, hi + 1) > target:
        hi *= 2
    lo = -1  # invariant: bound(lo) fails (or lo = -1), bound(hi) holds
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _log_tail(variance, mid + 1) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def bounded_skellam(d: int, variance: float, rng: np.random.Generator, tail: float = TAIL) -> np.ndarray:
    """Skellam noise (d,) int64 of `variance`, truncated to |x| <= share_bound(variance, tail) by drawing
    the coordinates beyond it again (so the result has the exact conditional distribution)."""
    h = share_bound(variance, tail)
    x = skellam(d, variance, rng)
    for _ in range(_MAX_REDRAWS):
        out = np.abs(x) > h
        if not out.any():
            return x
        x[out] = skellam(int(out.sum()), variance, rng)
    raise ParameterError(f"Skellam noise of variance {variance} stayed beyond its bound {h}"
                         f" after {_MAX_REDRAWS} draws")


def clerk_share_variance(sigma: float, n: int, t: int) -> float:
    """Variance of one clerk's share, sigma^2 / (n - t): any n - t honest clerks of n add sigma^2."""
    if not math.isfinite(sigma) or not sigma > 0:
        raise ParameterError(f"clerk noise needs a finite sigma > 0, got {sigma!r}")
    if not 0 <= t < n:
        raise ParameterError(f"clerk noise needs 0 <= t < n, got n={n}, t={t}")
    return sigma * sigma / (n - t)


def clerk_noise_share(d: int, sigma: float, n: int, t: int, rng: np.random.Generator) -> np.ndarray:
    """One clerk's noise share (d,) int64, field units, |x| <= share_bound(sigma^2 / (n - t))."""
    return bounded_skellam(d, clerk_share_variance(sigma, n, t), rng)


def clerk_noise_headroom(sigma: float, n: int, t: int) -> int:
    """The bound on |total clerk noise| of one coordinate (n shares, each within its bound): the least
    noise_headroom an announce with clerk noise may state."""
    return n * share_bound(clerk_share_variance(sigma, n, t))

"""Distributed differential-privacy noise as integer shares (DESIGN §3, "Noise"); numpy, no I/O.

Every variance here is in quantised units (field units: the gradient times the fixed-point scale).
The noise is Skellam, Sk(mu/2, mu/2) = Poisson(mu/2) - Poisson(mu/2) with variance mu: integer-valued,
so it goes through Z_p unchanged, and closed under sums, so N independent shares of variance mu/N add
up to exactly Sk with variance mu (Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially
Private Federated Learning", NeurIPS 2021). Who adds it, as the announce says:

- participants: each device adds variance sigma^2 / N_min, so any sum over >= N_min devices (the
  clerks refuse fewer) carries at least sigma^2;
- clerks: each of the n clerks adds sigma^2 / (n - t) as an extra noise participant, so the n - t
  clerks that are honest under the threat model provide sigma^2 by themselves.

Each share is truncated at a bound h (coordinates beyond it are drawn again), so the total noise is
bounded and the capacity check can make wrap-around impossible rather than unlikely. h is the
smallest integer whose Chernoff tail bound is <= 2^-80 per coordinate, so truncation moves the sum's
distribution by at most (shares * d * 2^-80) in total variation, far below any delta we account at.
"""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np

from .errors import LearningError

#: Per-coordinate probability that an untruncated share would exceed its bound.
TAIL = 2.0**-80


class NoiseMode(StrEnum):
    """Who adds the round's noise (the values of Announce.noise_added_by)."""

    NONE = "none"
    PARTICIPANTS = "participants"
    CLERKS = "clerks"


def skellam(shape: int | tuple[int, ...], variance: float, rng: np.random.Generator) -> np.ndarray:
    """Symmetric Skellam noise of `variance` (>= 0): int64 array of `shape`."""
    if not variance >= 0 or not math.isfinite(variance):
        raise LearningError(f"noise variance must be finite and >= 0, got {variance!r}")
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
    for _ in range(64):
        out = np.abs(x) > h
        if not out.any():
            return x
        x[out] = skellam(int(out.sum()), variance, rng)
    raise LearningError(f"Skellam noise of variance {variance} stayed beyond its bound {h} after 64 draws")


def share_variance(sigma: float, mode: NoiseMode, min_participants: int = 1, n: int = 1, t: int = 0) -> float:
    """Variance of one share: sigma^2 / N_min (participants), sigma^2 / (n - t) (clerks), 0 (none)."""
    mode = NoiseMode(mode)
    if mode is NoiseMode.NONE:
        return 0.0
    if not sigma > 0 or not math.isfinite(sigma):
        raise LearningError(f"noise sigma must be finite and > 0 when {mode.value} add noise, got {sigma!r}")
    if mode is NoiseMode.PARTICIPANTS:
        if min_participants < 1:
            raise LearningError(f"min_participants must be >= 1, got {min_participants}")
        return sigma * sigma / min_participants
    if not 0 <= t < n:
        raise LearningError(f"clerk noise needs 0 <= t < n, got n={n}, t={t}")
    return sigma * sigma / (n - t)


def participant_noise_share(d: int, sigma: float, min_participants: int, rng: np.random.Generator) -> np.ndarray:
    """One device's share (d,) int64: the sum over >= min_participants devices has variance >= sigma^2."""
    return bounded_skellam(d, share_variance(sigma, NoiseMode.PARTICIPANTS, min_participants=min_participants), rng)


def clerk_noise_share(d: int, sigma: float, n: int, t: int, rng: np.random.Generator) -> np.ndarray:
    """One clerk's share (d,) int64: any n - t honest clerks of n together add variance sigma^2."""
    return bounded_skellam(d, share_variance(sigma, NoiseMode.CLERKS, n=n, t=t), rng)


def noise_headroom(sigma: float, mode: NoiseMode, max_participants: int, min_participants: int = 1, n: int = 1,
                   t: int = 0) -> int:
    """A bound on |total noise| of one coordinate of the sum, in field units: shares times their bound (at most
    max_participants device shares, or n clerk shares). The announce's noise_headroom must be at least this."""
    mode = NoiseMode(mode)
    v = share_variance(sigma, mode, min_participants, n, t)
    shares = {NoiseMode.NONE: 0, NoiseMode.PARTICIPANTS: max_participants, NoiseMode.CLERKS: n}[mode]
    return shares * share_bound(v)

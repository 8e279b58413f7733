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

Each share is truncated at a bound h (sda.noise: the smallest with a Chernoff tail <= 2^-80 per
coordinate), so the total noise is bounded and the capacity check can make wrap-around impossible.
The sampler itself is sda.noise, shared with sda's clerks; this module says who adds which share.
"""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np

from sda import noise as _noise
from sda.errors import SdaError
from sda.noise import TAIL, share_bound, skellam_tail

from .errors import LearningError

# The sampling core lives in sda (its clerks add noise too); this module adds who-adds-what on top.
__all__ = ["TAIL", "NoiseMode", "bounded_skellam", "clerk_noise_share", "noise_headroom", "participant_noise_share",
           "share_bound", "share_variance", "skellam", "skellam_tail"]


class NoiseMode(StrEnum):
    """Who adds the round's noise (the values of Announce.noise_added_by)."""

    NONE = "none"
    PARTICIPANTS = "participants"
    CLERKS = "clerks"


def skellam(shape: int | tuple[int, ...], variance: float, rng: np.random.Generator) -> np.ndarray:
    """Symmetric Skellam noise of `variance` (>= 0): int64 array of `shape` (sda.noise.skellam)."""
    try:
        return _noise.skellam(shape, variance, rng)
    except SdaError as exc:
        raise LearningError(str(exc)) from None


def bounded_skellam(d: int, variance: float, rng: np.random.Generator, tail: float = TAIL) -> np.ndarray:
    """Truncated Skellam noise (d,) int64 of `variance` (sda.noise.bounded_skellam)."""
    try:
        return _noise.bounded_skellam(d, variance, rng, tail)
    except SdaError as exc:
        raise LearningError(str(exc)) from None


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
    return bounded_skellam(d, share_variance(sigma, NoiseMode.CLERKS, n=n, t=t), rng)  # = sda.noise.clerk_noise_share


def noise_headroom(sigma: float, mode: NoiseMode, max_participants: int, min_participants: int = 1, n: int = 1,
                   t: int = 0) -> int:
    """A bound on |total noise| of one coordinate of the sum, in field units: shares times their bound (at most
    max_participants device shares, or n clerk shares). The announce's noise_headroom must be at least this."""
    mode = NoiseMode(mode)
    v = share_variance(sigma, mode, min_participants, n, t)
    shares = {NoiseMode.NONE: 0, NoiseMode.PARTICIPANTS: max_participants, NoiseMode.CLERKS: n}[mode]
    return shares * share_bound(v)

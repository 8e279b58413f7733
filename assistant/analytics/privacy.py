"""The differential privacy of a day's analytics release (issue 8 part 2). Pure.

Neighbouring is zero-out at the device level (as for learning, assistant.learning.privacy): one device's
whole day, every counter, replaced by zeros. Each coordinate i of a device's vector lies in [0, max_i]
(registry ranges, enforced by clipping), so its L2 sensitivity is ||max||_2 and its L1 sensitivity
||max||_1, in field units (the scale is 1: counters are integers and encode exactly).

The clerks add Skellam noise of total variance >= sigma^2 (the n - t honest clerks alone give sigma^2,
sda.noise), so the release is accounted as the Skellam mechanism of variance sigma^2 (Agarwal, Kairouz and Liu,
NeurIPS 2021, via learning.privacy.RoundCost.skellam) and converted to (epsilon, delta) with dp-accounting
(learning.privacy.epsilon_of). Extra noise from more honest clerks only helps; the stated epsilon is an upper
bound for each day. Days compose: a device's total over D days is at most D times a day's rho.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import AssistantError
from ..learning.privacy import DEFAULT_DELTA, RoundCost, epsilon_of
from .registry import REGISTRY, EventKind, max_counts


@dataclass(frozen=True)
class Sensitivity:
    """One device's largest contribution to a day's sum, in field units."""

    l1: float
    l2: float


def sensitivities(registry: tuple[EventKind, ...] = REGISTRY, scale: float = 1.0) -> Sensitivity:
    """L1 and L2 sensitivity of a day's clipped vector under zero-out neighbouring."""
    m = max_counts(registry).astype(np.float64) * scale
    return Sensitivity(float(m.sum()), float(np.sqrt((m * m).sum())))


@dataclass(frozen=True)
class DayPrivacy:
    """The guarantee stated for one day's release: (epsilon, delta)-DP per device, from noise std `sigma`."""

    epsilon: float
    delta: float
    sigma: float
    rho: float


def day_privacy(sigma: float, delta: float = DEFAULT_DELTA, registry: tuple[EventKind, ...] = REGISTRY
                ) -> DayPrivacy:
    """(epsilon, delta) of one day's release with clerk Skellam noise of std `sigma` (field units)."""
    s = sensitivities(registry)
    cost = RoundCost.skellam(s.l2, s.l1, sigma * sigma)
    return DayPrivacy(epsilon_of(cost.rho, delta), delta, sigma, cost.rho)


def sigma_for_epsilon(epsilon: float, delta: float = DEFAULT_DELTA, registry: tuple[EventKind, ...] = REGISTRY
                      ) -> float:
    """The smallest noise std (to 1e-6 relative) whose day_privacy is at most `epsilon`; epsilon decreases
    with sigma, so bisection finds it."""
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise AssistantError(f"analytics epsilon must be finite and > 0, got {epsilon!r}")
    lo, hi = 0.0, sensitivities(registry).l2
    while day_privacy(hi, delta, registry).epsilon > epsilon:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-6 * hi:
        mid = (lo + hi) / 2.0
        if day_privacy(mid, delta, registry).epsilon > epsilon:
            lo = mid
        else:
            hi = mid
    return hi

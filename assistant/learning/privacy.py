"""The device's privacy ledger (DESIGN §8): Rényi-DP accounting with Google's `dp-accounting`, a budget
the owner sets (Settings.epsilon_budget, at delta = 1e-6), and the store's `learning_rounds` as the
record. The ledger itself is a pure value; `load_ledger` and `record_round` are the shell.

Neighbouring: zero-out (Kairouz et al., "Practical and Private (Deep) Learning without Sampling or
Shuffling", ICML 2021): the device's whole quantised gradient q is replaced by zeros, so a round's
sensitivities are those of q (`quantise.l2_sensitivity`, `l1_sensitivity`) and the noise includes the
device's own share. This is user-level privacy: one device, all its labels. No subsampling
amplification is claimed: a device that takes part contributes with certainty, and whether it took
part is visible to the coordinator.

A round's cost is kept as zCDP rho (Bun and Steinke 2016): its RDP is at most rho * alpha at every
integer order alpha >= 2, and rho adds up over rounds.
- `Accounting.SKELLAM` (the default, a proven bound): Agarwal, Kairouz and Liu (NeurIPS 2021, Thm 3.5)
  give, for Skellam noise of variance mu and integer alpha > 1,
      eps(alpha) <= alpha D2^2/(2 mu) + min( ((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2),  3 D1/(2 mu) ).
  Each branch is xi + rho alpha; at alpha >= 2 it is at most (rho + max(xi, 0)/2) alpha; we keep the
  smaller of the two branches' rho. Orders are integers only, since the bound is proven only there.
- `Accounting.GAUSSIAN`: rho = D2^2 / (2 sigma^2), the Gaussian mechanism of the same variance. It
  equals dp-accounting's GaussianDpEvent; for Skellam it is an approximation that ignores the
  discreteness, accurate only when sigma >> D2 (the bound above tells how far off it is).
Conversion to (eps, delta): dp-accounting's `compute_epsilon` (the improved RDP conversion of
Canonne, Kamath and Steinke 2020 / Asoodeh et al. 2020).

Persistence without a schema change: each stored round holds what it *added* to the device's total,
epsilon_spent = eps(rho_after, delta) - (the sum already stored) and delta for the first spending
round (0 after), so `Store.privacy_spent()` (a plain sum) returns the device's composed (eps, delta),
and the ledger recovers rho from it by inverting eps(rho, delta), which increases with rho, rounding up.
A refused round stores (0, 0). A failed round (shares sent, round broken off) spends like a completed
one: the shares were out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS, compute_epsilon

from ..store import LearningRound, RoundStatus, Store
from .errors import LearningError

DEFAULT_DELTA = 1e-6
#: dp-accounting's default orders that are integers (the Skellam bound holds at integer orders only).
ORDERS: tuple[int, ...] = tuple(int(a) for a in DEFAULT_RDP_ORDERS if float(a).is_integer() and a >= 2)
_ORDERS = np.array(ORDERS, np.float64)
_SAFETY = 1e-12  # relative margin on a rho recovered from stored sums (float rounding of the SQL sum)


class Accounting(StrEnum):
    """How a Skellam round's RDP is computed (see the module doc)."""

    SKELLAM = "skellam"
    GAUSSIAN = "gaussian"


@dataclass(frozen=True)
class RoundCost:
    """One round's privacy cost as zCDP rho (inf: the round adds no noise and may never be afforded)."""

    rho: float

    @classmethod
    def gaussian(cls, l2: float, sigma: float) -> RoundCost:
        """The Gaussian mechanism (or a Gaussian-equivalent approximation): rho = l2^2 / (2 sigma^2)."""
        return cls(math.inf if sigma <= 0 else l2 * l2 / (2.0 * sigma * sigma))

    @classmethod
    def skellam(cls, l2: float, l1: float, variance: float) -> RoundCost:
        """The Skellam mechanism of `variance` for sensitivities l2, l1 (Agarwal, Kairouz and Liu 2021)."""
        if variance <= 0:
            return cls(math.inf)
        mu, base = variance, l2 * l2 / (2.0 * variance)
        rho_a, xi_a = base + l2 * l2 / (2.0 * mu * mu), (6.0 * l1 - l2 * l2) / (4.0 * mu * mu)
        rho_b, xi_b = base, 3.0 * l1 / (2.0 * mu)
        return cls(min(rho_a + max(xi_a, 0.0) / 2.0, rho_b + xi_b / 2.0))


def epsilon_of(rho: float, delta: float) -> float:
    """The epsilon at `delta` of RDP rho * alpha over ORDERS (dp-accounting's conversion)."""
    if not 0 < delta < 1:
        raise LearningError(f"delta must be in (0, 1), got {delta!r}")
    if math.isinf(rho):
        return math.inf
    return float(compute_epsilon(ORDERS, rho * _ORDERS, delta)[0])


def rho_of(epsilon: float, delta: float) -> float:
    """The smallest rho whose epsilon_of(rho, delta) >= epsilon (bisection, rounded up)."""
    if epsilon <= 0:
        return 0.0
    hi = max(epsilon, 1e-12)
    while epsilon_of(hi, delta) < epsilon:
        hi *= 2.0
    lo = 0.0
    while hi - lo > 1e-13 * hi:
        mid = (lo + hi) / 2.0
        if epsilon_of(mid, delta) >= epsilon:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class PrivacyLedger:
    """What this device has spent (rho), its owner's budget (epsilon at `delta`), and what the store's rows sum
    to (`stored_epsilon`, `stored_delta`: what the next row's increment is measured from)."""

    budget: float
    delta: float = DEFAULT_DELTA
    rho: float = 0.0
    stored_epsilon: float = 0.0
    stored_delta: float = 0.0

    @classmethod
    def from_totals(cls, epsilon: float, delta_sum: float, budget: float, delta: float = DEFAULT_DELTA
                    ) -> PrivacyLedger:
        """The ledger behind stored rows summing to (epsilon, delta_sum); LearningError when they were kept at
        another delta (rho cannot be recovered then)."""
        if (epsilon > 0 or delta_sum > 0) and not math.isclose(delta_sum, delta, rel_tol=1e-9):
            raise LearningError(f"the stored learning rounds were accounted at delta={delta_sum:g}, this ledger"
                                f" keeps delta={delta:g}; keep one delta for a device's whole history")
        rho = rho_of(epsilon, delta) * (1 + _SAFETY)
        return cls(budget, delta, rho, epsilon, delta_sum)

    def epsilon_spent(self, delta: float | None = None) -> float:
        """Epsilon spent so far, at `delta` (default: the ledger's)."""
        return epsilon_of(self.rho, self.delta if delta is None else delta)

    @property
    def epsilon_left(self) -> float:
        """Budget minus what is spent (>= 0)."""
        return max(0.0, self.budget - self.epsilon_spent())

    def epsilon_after(self, cost: RoundCost) -> float:
        """Epsilon spent if `cost` were spent too."""
        return epsilon_of(self.rho + cost.rho, self.delta)

    def can_afford(self, cost: RoundCost) -> bool:
        """True when spending `cost` keeps the total within the owner's budget."""
        return self.epsilon_after(cost) <= self.budget

    def entry(self, round_id: str, cost: RoundCost, label_count: int, time_s: float,
              status: RoundStatus = RoundStatus.COMPLETED) -> LearningRound:
        """The `learning_rounds` row for a round that spent `cost` (see the module doc: an increment)."""
        if status is RoundStatus.REFUSED:
            return LearningRound(round_id, time_s, 0.0, 0.0, status, label_count)
        if math.isinf(cost.rho):
            raise LearningError(f"round {round_id!r} added no noise: its epsilon is unbounded, it must not be spent")
        after = self.epsilon_after(cost)
        return LearningRound(round_id, time_s, max(0.0, after - self.stored_epsilon),
                             max(0.0, self.delta - self.stored_delta), status, label_count)


def load_ledger(store: Store, delta: float = DEFAULT_DELTA) -> PrivacyLedger:
    """The ledger of the rounds in `store`, with the owner's budget from its settings."""
    epsilon, delta_sum = store.privacy_spent()
    return PrivacyLedger.from_totals(epsilon, delta_sum, store.settings().epsilon_budget, delta)


def record_round(store: Store, round_id: str, cost: RoundCost, label_count: int,
                 status: RoundStatus = RoundStatus.COMPLETED, time_s: float | None = None,
                 delta: float = DEFAULT_DELTA) -> LearningRound:
    """Add a round to the store's ledger (read afresh, so the increment is measured from what is stored);
    StoreError for a round id already there: a round spends once."""
    ledger = load_ledger(store, delta)
    row = ledger.entry(round_id, cost, label_count, time.time() if time_s is None else time_s, RoundStatus(status))
    store.record_learning_round(row)
    return row

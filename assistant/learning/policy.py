"""Whether this device takes part in a learning round: the owner opted in, there is enough new to learn
from, and the budget allows the round. A pure function returning a typed decision with its reason."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from ..store import Settings
from .privacy import PrivacyLedger, RoundCost


@dataclass(frozen=True)
class LearningPolicy:
    """The device's own rules, beyond the owner's settings."""

    min_new_labels: int = 20  # labels not yet learned from; a gradient over a handful says too much about each


class Refusal(StrEnum):
    """Why a device stays out of a round, first failing rule first."""

    NOT_OPTED_IN = "not_opted_in"
    TOO_FEW_LABELS = "too_few_labels"
    NO_NOISE = "no_noise"
    OVER_BUDGET = "over_budget"


@dataclass(frozen=True)
class Eligibility:
    """The decision, why (`refusal` is None when eligible), and the numbers behind it."""

    eligible: bool
    reason: str
    refusal: Refusal | None
    new_labels: int
    epsilon_spent: float
    epsilon_after: float  # if the round were spent (inf for a round without noise)


def decide(settings: Settings, new_labels: int, ledger: PrivacyLedger, cost: RoundCost,
           policy: LearningPolicy | None = None) -> Eligibility:
    """Eligible when the owner opted in, at least `policy.min_new_labels` labels are new since the last
    round, and spending `cost` keeps epsilon within the budget; the first rule that fails is the reason."""
    policy = policy or LearningPolicy()
    spent, after = ledger.epsilon_spent(), ledger.epsilon_after(cost)

    def no(refusal: Refusal, reason: str) -> Eligibility:
        return Eligibility(False, reason, refusal, new_labels, spent, after)

    if not settings.learning_opt_in:
        return no(Refusal.NOT_OPTED_IN, "the owner has not opted in to learning rounds")
    if new_labels < policy.min_new_labels:
        return no(Refusal.TOO_FEW_LABELS,
                  f"{new_labels} new label(s) since the last round; at least {policy.min_new_labels} needed")
    if math.isinf(after):
        return no(Refusal.NO_NOISE, "the round adds no differential-privacy noise: its epsilon is unbounded")
    if not ledger.can_afford(cost):
        return no(Refusal.OVER_BUDGET, f"the round would bring epsilon to {after:.3f} (delta {ledger.delta:g}),"
                                       f" over the owner's budget of {ledger.budget:g} ({spent:.3f} spent)")
    return Eligibility(True, f"eligible: {new_labels} new labels, epsilon {spent:.3f} -> {after:.3f} of"
                             f" {ledger.budget:g}", None, new_labels, spent, after)

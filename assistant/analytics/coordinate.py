"""The coordinator's side of the daily analytics aggregation (issue 8 part 2): the sda AggregationSpec of a
day, with the registry's names and the stated (epsilon, delta) stored in it so `sda analytics report` can
show them without importing the assistant.

    request_day(coordinator, "2026-11-26", AnalyticsConfig(epsilon=1.0))

Noise: Skellam, added by the committee's clerks as sda noise participants (noise_added_by="clerks"), total
std sigma from the n - t honest clerks alone; sigma is the smallest that meets `epsilon` at `delta` for the
registry's sensitivities (privacy.sigma_for_epsilon). Scale 1: counters are integers and encode exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from sda.errors import SdaError
from sda.noise import clerk_noise_headroom
from sda.services.coordinator import AggregationSpec, Coordinator
from sda.services.report import analytics_id
from sda.simulation import default_thresholds

from ..errors import AssistantError
from ..learning.privacy import DEFAULT_DELTA
from .privacy import day_privacy, sigma_for_epsilon
from .registry import REGISTRY, max_counts, names


@dataclass(frozen=True)
class AnalyticsConfig:
    """What every day's analytics aggregation announces. committee_size is pinned (and k, t derived from it)
    because the headroom of n clerk shares is stated before the committee is drawn."""

    epsilon: float = 1.0
    delta: float = DEFAULT_DELTA
    committee_size: int = 12
    min_participants: int = 100
    max_participants: int = 100_000
    collect_s: float = 3600.0
    results_s: float = 600.0
    clerk_reward: int = 1  # tokens a clerk earns per participant summed, when its result was used

    def __post_init__(self) -> None:
        if not self.epsilon > 0 or not 0 < self.delta < 1:
            raise AssistantError(f"analytics privacy: need epsilon > 0 and 0 < delta < 1, got ({self.epsilon},"
                                 f" {self.delta})")
        if self.committee_size < 3:
            raise AssistantError(f"analytics committee_size {self.committee_size}: need at least 3 clerks")


def analytics_spec(day: str, config: AnalyticsConfig = AnalyticsConfig()) -> AggregationSpec:
    """The sda aggregation of day `day`'s counters (YYYY-MM-DD)."""
    try:
        agg = analytics_id(day)
        k, t = default_thresholds(config.committee_size)
    except SdaError as exc:
        raise AssistantError(str(exc)) from None
    sigma = sigma_for_epsilon(config.epsilon, config.delta)
    stated = day_privacy(sigma, config.delta)
    return AggregationSpec(
        agg, len(REGISTRY), scale=1.0, clip_lo=0.0, clip_hi=float(max_counts().max()), k=k, t=t,
        committee_size=config.committee_size, collect_s=config.collect_s, results_s=config.results_s,
        min_participants=config.min_participants, max_participants=config.max_participants,
        noise_mechanism="skellam", noise_added_by="clerks", noise_sigma=sigma,
        noise_headroom=clerk_noise_headroom(sigma, config.committee_size, t),
        labels=names(), dp_epsilon=stated.epsilon, dp_delta=stated.delta,
        reward_per_participant=config.clerk_reward)


def request_day(coordinator: Coordinator, day: str, config: AnalyticsConfig = AnalyticsConfig()) -> bool:
    """Ask `coordinator` to run day `day`'s aggregation (announced on its next tick); False if already asked."""
    return coordinator.request(analytics_spec(day, config))

"""Private product analytics (issue 8): daily usage counters, each clipped to a declared range, summed across
devices by secure aggregation with DP noise added by the clerks.

- registry: the event kinds, their ranges and the vector layout (pure);
- privacy: sensitivities and the (epsilon, delta) of a day's release (pure);
- counters: the counting API the service and the TUI call (the store's analytics_counts);
- participate: the device's answer to a day's announce (opted in only);
- coordinate: the coordinator's request for a day.
"""

from .counters import count, count_many, day_counts
from .registry import REGISTRY, EventKind, UnknownEvent, day_vector

__all__ = ["REGISTRY", "EventKind", "UnknownEvent", "count", "count_many", "day_counts", "day_vector"]

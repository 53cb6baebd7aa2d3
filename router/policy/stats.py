"""Routing counters, as plain attributes the metrics exporter reads."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from router.policy.decider import DecisionKind

__all__ = ["LOOKUP_LATENCY_BUCKETS_S", "RoutingStats"]

LOOKUP_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
    float("inf"),
)
"""Upper bounds (seconds, inclusive) of the index-lookup latency histogram buckets."""


@dataclass
class RoutingStats:
    """What the policy decided and how well the index served it."""

    num_prompt_tokens: int = 0
    """Prompt tokens routed."""
    num_cached_prompt_tokens: int = 0
    """Of those, tokens cached on the worker that prefills them (index hits)."""
    decisions: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in DecisionKind})
    """Decisions by kind (``DecisionKind.value``)."""
    reasons: dict[str, int] = field(default_factory=dict)
    """Decisions by the decider's reason."""
    num_lookup_failures: int = 0
    """Lookups that failed, so routing went on without prefix information."""
    lookup_latency_buckets: list[int] = field(
        default_factory=lambda: [0] * len(LOOKUP_LATENCY_BUCKETS_S)
    )
    """Non-cumulative counts per bucket of :data:`LOOKUP_LATENCY_BUCKETS_S`."""
    lookup_latency_sum_s: float = 0.0
    num_lookups: int = 0

    @property
    def hit_rate(self) -> float:
        """Cached prompt tokens / prompt tokens (0 before any request)."""
        if self.num_prompt_tokens == 0:
            return 0.0
        return self.num_cached_prompt_tokens / self.num_prompt_tokens

    def observe_lookup(self, latency_s: float) -> None:
        """Records one successful index lookup's latency."""
        self.num_lookups += 1
        self.lookup_latency_sum_s += latency_s
        self.lookup_latency_buckets[bisect.bisect_left(LOOKUP_LATENCY_BUCKETS_S, latency_s)] += 1

    def observe_lookup_failure(self) -> None:
        """Records a failed lookup (the request was routed on load alone)."""
        self.num_lookup_failures += 1

    def observe_decision(
        self, kind: DecisionKind, reason: str, num_prompt_tokens: int, num_cached_tokens: int
    ) -> None:
        """Records one routing decision."""
        self.decisions[kind.value] = self.decisions.get(kind.value, 0) + 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.num_prompt_tokens += num_prompt_tokens
        self.num_cached_prompt_tokens += num_cached_tokens

"""The one place scorers are registered and composed from the routing config."""

from __future__ import annotations

from collections.abc import Callable

from pdserve.config import RoutingConfig
from router.policy.load_scorer import LoadScorer
from router.policy.prefix_scorer import PrefixScorer
from router.policy.queue_scorer import QueueScorer
from router.policy.scorer import Scorer

__all__ = ["SCORERS", "build_scorers"]

SCORERS: dict[str, tuple[Callable[[], Scorer], Callable[[RoutingConfig], float]]] = {
    "prefix": (PrefixScorer, lambda c: c.prefix_weight),
    "queue": (QueueScorer, lambda c: c.queue_weight),
    "load": (LoadScorer, lambda c: c.load_weight),
}
"""Scorer name -> (factory, the config weight that scales it)."""


def build_scorers(config: RoutingConfig) -> list[tuple[Scorer, float]]:
    """Every registered scorer with its weight from ``config``."""
    return [(factory(), weight_of(config)) for factory, weight_of in SCORERS.values()]

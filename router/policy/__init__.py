"""The routing policy: filters, scorers and a weighted picker choose the prefill and decode
workers of a request, and a decider chooses whether to disaggregate it. Plain Python: no engine,
no Redis, so it runs and is tested without either. The router calls :func:`plan`."""

from router.policy.decider import Decider, Decision, DecisionKind
from router.policy.filters import (
    CompatibilityFilter,
    Filter,
    ReadyFilter,
    RoleFilter,
    apply_filters,
)
from router.policy.load_scorer import LoadScorer
from router.policy.picker import Pick, WeightedPicker
from router.policy.plan import NoWorkerAvailable, RoutingDecision, plan
from router.policy.prefix_scorer import PrefixScorer
from router.policy.queue_scorer import QueueScorer
from router.policy.registry import SCORERS, build_scorers
from router.policy.scorer import Scorer, ScoringRequest
from router.policy.stats import LOOKUP_LATENCY_BUCKETS_S, RoutingStats
from router.policy.worker import Role, WorkerState, WorkerView

__all__ = [
    "LOOKUP_LATENCY_BUCKETS_S",
    "SCORERS",
    "CompatibilityFilter",
    "Decider",
    "Decision",
    "DecisionKind",
    "Filter",
    "LoadScorer",
    "NoWorkerAvailable",
    "Pick",
    "PrefixScorer",
    "QueueScorer",
    "ReadyFilter",
    "Role",
    "RoleFilter",
    "RoutingDecision",
    "RoutingStats",
    "Scorer",
    "ScoringRequest",
    "WeightedPicker",
    "WorkerState",
    "WorkerView",
    "apply_filters",
    "build_scorers",
    "plan",
]

"""``/metrics``: the router's counters in the Prometheus text format.

The values are read from :class:`router.server.RouterStats` (shared by the gRPC and HTTP front
doors) at scrape time by a custom collector in a private ``CollectorRegistry``, so several routers
in one process (tests) never clash in the global registry.

==========================================  =======  =========================================
metric                                      type     labels
==========================================  =======  =========================================
pdserve_router_requests_total               counter
pdserve_router_requests_finished_total      counter  result = ok | failed
pdserve_router_requests_in_flight           gauge
pdserve_router_prompt_tokens_total          counter
pdserve_router_cached_prompt_tokens_total   counter
pdserve_router_decisions_total              counter  decision = disaggregated | decode_only
pdserve_router_ready_workers                gauge    role = prefill | decode
pdserve_router_routing_decisions_total      counter  kind, reason (the decider's reason token)
pdserve_router_index_prompt_tokens_total    counter
pdserve_router_index_hit_tokens_total       counter
pdserve_router_index_lookup_seconds         histo
pdserve_router_index_lookup_failures_total  counter
==========================================  =======  =========================================

The ``routing`` and ``index`` series come from the cache-aware selector's
:class:`router.policy.RoutingStats`: ``index_hit_tokens / index_prompt_tokens`` is the prefix
hit rate the index predicted at routing time (the ``cached_prompt_tokens`` counter above is what
the engines then reported).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from router.policy import LOOKUP_LATENCY_BUCKETS_S, RoutingStats

if TYPE_CHECKING:
    from router.server import GenerationServicer

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of the exposition."""


class RouterCollector(Collector):
    """Reads a servicer's counters at each scrape."""

    def __init__(self, servicer: GenerationServicer) -> None:
        self.servicer = servicer

    def collect(self) -> Iterator[Metric]:
        servicer = self.servicer
        stats = servicer.stats
        yield CounterMetricFamily(
            "pdserve_router_requests", "Requests received by the router.", value=stats.num_requests
        )
        finished = CounterMetricFamily(
            "pdserve_router_requests_finished",
            "Requests that ended, by result (failed includes rejected and cancelled ones).",
            labels=["result"],
        )
        finished.add_metric(["ok"], stats.num_ok)
        finished.add_metric(["failed"], stats.num_failed)
        yield finished
        yield GaugeMetricFamily(
            "pdserve_router_requests_in_flight",
            "Requests being served now.",
            value=servicer.num_inflight,
        )
        yield CounterMetricFamily(
            "pdserve_router_prompt_tokens",
            "Prompt tokens of finished requests.",
            value=stats.prompt_tokens,
        )
        yield CounterMetricFamily(
            "pdserve_router_cached_prompt_tokens",
            "Prompt tokens whose KV cache was reused rather than computed.",
            value=stats.cached_prompt_tokens,
        )
        decisions = CounterMetricFamily(
            "pdserve_router_decisions",
            "Routing decisions of finished requests.",
            labels=["decision"],
        )
        decisions.add_metric(["disaggregated"], stats.num_disaggregated)
        decisions.add_metric(["decode_only"], stats.num_decode_only)
        yield decisions
        workers = GaugeMetricFamily(
            "pdserve_router_ready_workers",
            "Workers of the served model ready to take requests, by role.",
            labels=["role"],
        )
        model = servicer.config.model.name
        for role in ("prefill", "decode"):
            workers.add_metric([role], len(servicer.view.ready(role, model)))
        yield workers
        yield from _routing_metrics(servicer.routing_stats)


def _routing_metrics(routing: RoutingStats) -> Iterator[Metric]:
    by_reason = CounterMetricFamily(
        "pdserve_router_routing_decisions",
        "Routing decisions by kind and the decider's reason.",
        labels=["kind", "reason"],
    )
    for reason, count in sorted(routing.reasons.items()):
        kind = "decode_only" if reason in _DECODE_ONLY_REASONS else "disaggregated"
        by_reason.add_metric([kind, reason], count)
    yield by_reason
    yield CounterMetricFamily(
        "pdserve_router_index_prompt_tokens",
        "Prompt tokens routed by the cache-aware policy.",
        value=routing.num_prompt_tokens,
    )
    yield CounterMetricFamily(
        "pdserve_router_index_hit_tokens",
        "Of those, tokens the index said the computing worker already caches.",
        value=routing.num_cached_prompt_tokens,
    )
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(LOOKUP_LATENCY_BUCKETS_S, routing.lookup_latency_buckets, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    yield HistogramMetricFamily(
        "pdserve_router_index_lookup_seconds",
        "Latency of prefix-cache index lookups (one Redis round trip each).",
        buckets=buckets,
        sum_value=routing.lookup_latency_sum_s,
    )
    yield CounterMetricFamily(
        "pdserve_router_index_lookup_failures",
        "Index lookups that failed, so the request was routed on load alone.",
        value=routing.num_lookup_failures,
    )


#: The decider's reasons that send a request to decode only (router/policy/decider.py).
_DECODE_ONLY_REASONS = frozenset({"no_prefill_worker", "single_token", "short_uncached"})


class RouterMetrics:
    """A private registry holding one :class:`RouterCollector`."""

    def __init__(self, servicer: GenerationServicer) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RouterCollector(servicer))

    def exposition(self) -> bytes:
        """The Prometheus text exposition of the current values."""
        return generate_latest(self.registry)

"""pdserve's metrics in Ray (``ray.util.metrics``), so the Ray dashboard and Prometheus show them.

Ray exports each metric with the prefix ``ray_`` and counters with the suffix ``_total``; the
names below are those given to Ray. docs/metrics.md lists each with its type, tags and meaning.

:class:`WorkerMetrics` belongs to one worker actor (tags ``role``, ``worker``, ``model``): the
engine's load gauges, TTFT / inter-token latency histograms, token counters, KV transfer
counters and restarts. Counters are fed from the engine's running totals by
:class:`DeltaTracker`, which turns totals into increments (and survives a total that restarts
from zero with a new engine). :class:`PoolMetrics` belongs to the pool manager.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ITL_BOUNDARIES_S",
    "TTFT_BOUNDARIES_S",
    "DeltaTracker",
    "PoolMetrics",
    "WorkerMetrics",
]

logger = logging.getLogger(__name__)

TTFT_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
ITL_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5]

WORKER_TAGS = ("role", "worker", "model")

# Engine totals (EngineLoad fields and TransferStats.snapshot() keys) -> counter names.
PROMPT_TOKEN_SOURCES = {
    "prompt_tokens_computed": "computed",
    "prompt_tokens_local_hit": "cached",
    "prompt_tokens_transferred": "transferred",
}
TRANSFER_COUNTERS = {
    "num_transfers": "pdserve_kv_transfers",
    "num_blocks": "pdserve_kv_transfer_blocks",
    "num_bytes": "pdserve_kv_transfer_bytes",
    "transfer_s": "pdserve_kv_transfer_seconds",
    "num_failed": "pdserve_kv_transfer_failures",
    "num_releases": "pdserve_kv_releases",
}


class DeltaTracker:
    """Turns running totals into increments for counters.

    ``delta(key, total)`` returns how much ``total`` grew since the last call with ``key``; a
    total that went down (a new engine counting from zero) counts from zero again.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def delta(self, key: str, total: float) -> float:
        last = self._last.get(key, 0.0)
        self._last[key] = total
        if total < last:
            return total
        return total - last


class WorkerMetrics:
    """The Ray metrics of one worker actor."""

    def __init__(self, role: str, worker: str, model: str) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.tags = {"role": role, "worker": worker, "model": model}
        self._deltas = DeltaTracker()
        self.running = Gauge(
            "pdserve_worker_requests_running",
            description="Requests the worker's engine is running (scheduler view).",
            tag_keys=WORKER_TAGS,
        )
        self.waiting = Gauge(
            "pdserve_worker_requests_waiting",
            description="Requests queued in the worker's engine, not yet scheduled.",
            tag_keys=WORKER_TAGS,
        )
        self.kv_usage = Gauge(
            "pdserve_worker_kv_usage",
            description="Fraction of the worker's KV-cache blocks in use (0-1).",
            tag_keys=WORKER_TAGS,
        )
        self.ready = Gauge(
            "pdserve_worker_ready",
            description="1 while the worker serves, 0 while it starts or drains.",
            tag_keys=WORKER_TAGS,
        )
        self.ttft = Histogram(
            "pdserve_worker_ttft_seconds",
            description="Seconds from a request reaching the worker's engine to its first "
            "token there (prefill: the prompt's compute; decode: KV pull and first step).",
            boundaries=TTFT_BOUNDARIES_S,
            tag_keys=WORKER_TAGS,
        )
        self.itl = Histogram(
            "pdserve_worker_itl_seconds",
            description="Seconds between tokens of one request on the worker (TPOT).",
            boundaries=ITL_BOUNDARIES_S,
            tag_keys=WORKER_TAGS,
        )
        self.generated_tokens = Counter(
            "pdserve_worker_generated_tokens",
            description="Tokens the worker generated (rate = tokens/s).",
            tag_keys=WORKER_TAGS,
        )
        self.requests = Counter(
            "pdserve_worker_requests",
            description="Requests the worker finished (any outcome).",
            tag_keys=WORKER_TAGS,
        )
        self.prompt_tokens = Counter(
            "pdserve_worker_prompt_tokens",
            description="Prompt tokens by source: computed here, cached here, transferred in.",
            tag_keys=(*WORKER_TAGS, "source"),
        )
        self.restarts = Counter(
            "pdserve_worker_restarts",
            description="Times Ray restarted the worker's actor.",
            tag_keys=WORKER_TAGS,
        )
        self.transfers = {
            key: Counter(name, description=f"KV transfer total {key}.", tag_keys=WORKER_TAGS)
            for key, name in TRANSFER_COUNTERS.items()
        }

    def observe_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds, tags=self.tags)

    def observe_next_tokens(self, seconds: float, num_tokens: int) -> None:
        """``num_tokens`` arrived ``seconds`` after the previous ones: one ITL sample each."""
        per_token = seconds / max(1, num_tokens)
        for _ in range(num_tokens):
            self.itl.observe(per_token, tags=self.tags)

    def add_generated(self, num_tokens: int) -> None:
        if num_tokens > 0:
            self.generated_tokens.inc(num_tokens, tags=self.tags)

    def add_request(self) -> None:
        self.requests.inc(1, tags=self.tags)

    def add_restart(self) -> None:
        self.restarts.inc(1, tags=self.tags)

    def export_load(
        self,
        *,
        running: int,
        waiting: int,
        kv_usage: float,
        ready: bool,
        totals: Mapping[str, float],
    ) -> None:
        """Sets the gauges and advances the counters from the engine's totals (``EngineLoad``
        prompt-token fields and ``TransferStats.snapshot()``)."""
        self.running.set(running, tags=self.tags)
        self.waiting.set(waiting, tags=self.tags)
        self.kv_usage.set(kv_usage, tags=self.tags)
        self.ready.set(1.0 if ready else 0.0, tags=self.tags)
        for key, source in PROMPT_TOKEN_SOURCES.items():
            if key in totals:
                grown = self._deltas.delta(key, float(totals[key]))
                if grown > 0:
                    self.prompt_tokens.inc(grown, tags={**self.tags, "source": source})
        for key, counter in self.transfers.items():
            if key in totals:
                grown = self._deltas.delta(key, float(totals[key]))
                if grown > 0:
                    counter.inc(grown, tags=self.tags)


class PoolMetrics:
    """The pool manager's gauges: desired and actual pool sizes, workers by state."""

    def __init__(self) -> None:
        from ray.util.metrics import Gauge

        self.desired = Gauge(
            "pdserve_pool_desired_workers",
            description="Workers each pool should have (set by scale / the planner).",
            tag_keys=("role",),
        )
        self.workers = Gauge(
            "pdserve_pool_workers",
            description="Worker actors of each pool by state (starting, ready, draining, failed).",
            tag_keys=("role", "state"),
        )

    def export(self, desired: Mapping[str, int], by_state: Mapping[tuple[str, str], int]) -> None:
        for role, n in desired.items():
            self.desired.set(n, tags={"role": role})
        for (role, state), n in by_state.items():
            self.workers.set(n, tags={"role": role, "state": state})


def load_totals(load: Any, transfers: Mapping[str, float]) -> dict[str, float]:
    """The running totals :meth:`WorkerMetrics.export_load` advances counters from."""
    totals = {key: float(getattr(load, key, 0)) for key in PROMPT_TOKEN_SOURCES}
    totals.update({k: float(v) for k, v in transfers.items()})
    return totals

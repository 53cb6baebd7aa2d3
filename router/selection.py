"""Choosing the workers of a request.

A selector turns the live worker view into a :class:`Route`: the decode worker, the prefill
worker (None for decode-only requests) and the other prefill workers to retry on. Two exist,
chosen by ``router.routing.policy``:

- :class:`CacheAwareSelector` (``cache_aware``, the default) computes the prompt's chained block
  keys, asks the prefix-cache index in one round trip how many leading blocks each live worker
  holds, and lets the routing policy (:func:`router.policy.plan`: filters, weighted scorers,
  the disaggregation decider) choose. If the index cannot answer, it routes on load alone, logs
  that once, and retries the index after a short pause; routing quality drops, requests do not.
- :class:`RoundRobinSelector` (``round_robin``) takes turns among compatible ready workers; it is
  the baseline the benchmarks compare against.

Both pair only workers whose KV layouts are compatible. The router's own requests in flight
(:meth:`router.workers.WorkerView.track`) are added to the load the workers last published, so
a burst of requests spreads out before the next heartbeat shows it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pdserve.config import RoutingConfig
from pdserve.errors import NoWorkerAvailable
from pdserve.index import KVIndex, KVIndexError, block_keys
from pdserve.registry import WorkerInfo
from router import policy
from router.workers import WorkerView

if TYPE_CHECKING:
    from router.dispatch import RequestState

logger = logging.getLogger(__name__)

__all__ = ["CacheAwareSelector", "RoundRobinSelector", "Route", "Selector", "policy_view"]

#: After a failed index lookup, lookups pause this long (requests route on load meanwhile).
INDEX_RETRY_S = 1.0
#: A lookup slower than this is given up (Redis is hung, not just slow).
INDEX_LOOKUP_TIMEOUT_S = 0.25


@dataclass
class Route:
    """The workers chosen for one request."""

    decode: WorkerInfo
    prefill: WorkerInfo | None = None
    alternates: list[WorkerInfo] = field(default_factory=list)
    """Other compatible prefill workers, in retry order."""
    cached_blocks: dict[str, int] = field(default_factory=dict)
    """Leading prompt blocks the index says each live worker holds (empty: not looked up)."""
    reason: str = ""
    """Why the route is what it is (the decider's reason token)."""


class Selector(Protocol):
    """Chooses workers for requests."""

    async def select(self, state: RequestState) -> Route:
        """The workers of a new request; raises NoWorkerAvailable when no decode worker fits."""
        ...

    async def select_decode(self, state: RequestState) -> WorkerInfo:
        """A decode worker to resume a request on (the failed one is excluded by the view)."""
        ...


def _no_decode_worker(state: RequestState) -> NoWorkerAvailable:
    return NoWorkerAvailable(
        f"no decode worker is registered for model {state.model!r}; start one or wait "
        "for the pool to come up",
        request_id=state.request_id,
    )


class RoundRobinSelector:
    """Round-robin over compatible ready workers, blind to caches and load."""

    def __init__(self, view: WorkerView) -> None:
        self.view = view
        self._counter = itertools.count()

    def _decode_candidates(self, state: RequestState) -> list[WorkerInfo]:
        decode = self.view.ready("decode", state.model)
        if not decode:
            raise _no_decode_worker(state)
        return decode

    async def select_decode(self, state: RequestState) -> WorkerInfo:
        candidates = self._decode_candidates(state)
        return candidates[next(self._counter) % len(candidates)]

    async def select(self, state: RequestState) -> Route:
        turn = next(self._counter)
        decode_pool = self._decode_candidates(state)
        decode = decode_pool[turn % len(decode_pool)]
        if state.sampling.max_tokens == 1:
            return Route(decode=decode, reason="single_token")
        prefill_pool = [
            w
            for w in self.view.ready("prefill", state.model)
            if w.compat_hash == decode.compat_hash
        ]
        if not prefill_pool:
            return Route(decode=decode, reason="no_prefill_worker")
        first = turn % len(prefill_pool)
        ordered = prefill_pool[first:] + prefill_pool[:first]
        return Route(
            decode=decode, prefill=ordered[0], alternates=ordered[1:], reason="round_robin"
        )


def policy_view(
    info: WorkerInfo, *, inflight_requests: int = 0, inflight_prefill_tokens: int = 0
) -> policy.WorkerView:
    """The routing policy's view of a registered worker, with this router's own requests in
    flight on it folded into the load it last published."""
    state = info.state if info.state in ("starting", "ready", "draining") else "draining"
    return policy.WorkerView(
        worker_id=info.worker_id,
        role="prefill" if info.role == "prefill" else "decode",
        endpoint=info.endpoint,
        compat_hash=info.compat_hash,
        num_running=max(info.num_running, inflight_requests),
        num_waiting=max(info.num_waiting, 0),
        queued_prefill_tokens=max(info.queued_prefill_tokens, inflight_prefill_tokens),
        kv_usage=info.kv_usage,
        state=state,  # type: ignore[arg-type]
    )


class CacheAwareSelector:
    """Routes by the prefix-cache index and the workers' load (see the module docstring)."""

    def __init__(
        self,
        view: WorkerView,
        index: KVIndex | None,
        config: RoutingConfig,
        stats: policy.RoutingStats | None = None,
    ) -> None:
        self.view = view
        self.index = index
        self.config = config
        self.stats = stats if stats is not None else policy.RoutingStats()
        self._index_down_until = 0.0
        self._index_down = False

    def _views(self, workers: list[WorkerInfo]) -> list[policy.WorkerView]:
        return [
            policy_view(
                w,
                inflight_requests=self.view.inflight_requests.get(w.worker_id, 0),
                inflight_prefill_tokens=self.view.inflight_prefill_tokens.get(w.worker_id, 0),
            )
            for w in workers
        ]

    async def lookup(
        self, prompt_ids: list[int], block_size: int, worker_ids: list[str]
    ) -> dict[str, int]:
        """Leading cached blocks of the prompt per worker; ``{}`` when the index is unusable."""
        if self.index is None or block_size < 1 or len(prompt_ids) < block_size:
            return {}
        now = time.monotonic()
        if now < self._index_down_until:
            return {}
        keys = block_keys(prompt_ids, block_size)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(INDEX_LOOKUP_TIMEOUT_S):
                cached = await self.index.lookup(keys, worker_ids)
        except (KVIndexError, TimeoutError) as exc:
            self.stats.observe_lookup_failure()
            self._index_down_until = time.monotonic() + INDEX_RETRY_S
            if not self._index_down:
                self._index_down = True
                logger.warning(
                    "prefix-cache index unavailable (%s); routing on load alone until it "
                    "answers again",
                    exc or type(exc).__name__,
                )
            return {}
        self.stats.observe_lookup(time.perf_counter() - started)
        if self._index_down:
            self._index_down = False
            logger.info("prefix-cache index available again; routing by cached prefix")
        return cached

    async def select(self, state: RequestState) -> Route:
        decode = self.view.ready("decode", state.model)
        if not decode:
            raise _no_decode_worker(state)
        prefill = self.view.ready("prefill", state.model)
        workers = decode + prefill
        block_size = Counter(w.block_size for w in decode).most_common(1)[0][0]
        cached = await self.lookup(state.prompt_ids, block_size, [w.worker_id for w in workers])
        by_id = {w.worker_id: w for w in workers}
        views = self._views(workers)
        decision: policy.RoutingDecision | None = None
        # Prefill and decode must share a KV layout: plan within each layout group (a fleet
        # normally has one) and keep the plan that reuses the most cache, then scores best.
        for compat in sorted({w.compat_hash for w in decode}):
            try:
                candidate = policy.plan(
                    state.request_id,
                    len(state.prompt_ids),
                    views,
                    self.config,
                    block_size=block_size,
                    max_tokens=state.sampling.max_tokens,
                    compat_hash=compat,
                    cached_blocks=cached,
                )
            except policy.NoWorkerAvailable:
                continue
            if decision is None or _rank(candidate) > _rank(decision):
                decision = candidate
        if decision is None:
            raise _no_decode_worker(state)
        self.stats.observe_decision(
            decision.kind,
            decision.reason,
            decision.num_prompt_tokens,
            _cached_tokens(decision, block_size),
        )
        route = Route(
            decode=by_id[decision.decode.worker_id],
            cached_blocks=cached,
            reason=decision.reason,
        )
        if decision.prefill is not None:
            route.prefill = by_id[decision.prefill.worker_id]
            scores = decision.prefill_scores
            others = sorted(
                (w for w in scores if w != decision.prefill.worker_id),
                key=lambda w: (-scores[w]["total"], w),
            )
            route.alternates = [by_id[w] for w in others]
        logger.debug(
            "[%s] routed %s (%s): prefill=%s decode=%s prompt_tokens=%d cached_blocks=%s",
            state.request_id,
            decision.kind.value,
            decision.reason,
            route.prefill.worker_id if route.prefill else None,
            route.decode.worker_id,
            len(state.prompt_ids),
            decision.cached_blocks,
        )
        return route

    async def select_decode(self, state: RequestState) -> WorkerInfo:
        decode = self.view.ready("decode", state.model)
        if not decode:
            raise _no_decode_worker(state)
        block_size = Counter(w.block_size for w in decode).most_common(1)[0][0]
        prompt = state.prompt_ids + state.emitted
        cached = await self.lookup(prompt, block_size, [w.worker_id for w in decode])
        by_id = {w.worker_id: w for w in decode}
        picker = policy.WeightedPicker(policy.build_scorers(self.config))
        views = [
            dataclasses.replace(v, cached_blocks=cached.get(v.worker_id, 0))
            for v in self._views(decode)
        ]
        request = policy.ScoringRequest(state.request_id, len(prompt), max(block_size, 1))
        return by_id[picker.pick(request, views).worker.worker_id]


def _cached_tokens(decision: policy.RoutingDecision, block_size: int) -> int:
    computing = decision.prefill if decision.prefill is not None else decision.decode
    blocks = decision.cached_blocks.get(computing.worker_id, 0)
    return min(blocks * block_size, decision.num_prompt_tokens)


def _rank(decision: policy.RoutingDecision) -> tuple[int, float]:
    computing = decision.prefill if decision.prefill is not None else decision.decode
    score = (decision.prefill_scores or decision.decode_scores)[computing.worker_id]["total"]
    return decision.cached_blocks.get(computing.worker_id, 0), score

"""``plan``: the routing policy's entry point, called by the router once per request."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pdserve.config import RoutingConfig
from router.policy.decider import Decider, DecisionKind
from router.policy.filters import CompatibilityFilter, ReadyFilter, RoleFilter, apply_filters
from router.policy.picker import WeightedPicker
from router.policy.registry import build_scorers
from router.policy.scorer import ScoringRequest
from router.policy.stats import RoutingStats
from router.policy.worker import WorkerView

__all__ = ["NoWorkerAvailable", "RoutingDecision", "plan"]

logger = logging.getLogger(__name__)


class NoWorkerAvailable(Exception):
    """No ready, compatible decode worker can take the request."""

    def __init__(self, request_id: str, message: str) -> None:
        super().__init__(f"request {request_id}: {message}")
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Where a request goes, and why."""

    request_id: str
    kind: DecisionKind
    reason: str
    """The decider's reason token (``uncached_prefill``, ``short_uncached``, ...)."""
    decode: WorkerView
    prefill: WorkerView | None
    """The prefill worker; ``None`` when ``kind`` is ``DECODE_ONLY``."""
    cached_blocks: dict[str, int]
    """Leading prompt blocks cached on each chosen worker, by worker id."""
    num_prompt_tokens: int
    num_uncached_tokens: int
    """Prompt tokens the decode worker does not cache."""
    decode_scores: dict[str, dict[str, float]]
    """Every decode candidate's scores by scorer name, plus ``total``."""
    prefill_scores: dict[str, dict[str, float]]
    """Every prefill candidate's scores; empty when no prefill worker was picked."""


def plan(
    request_id: str,
    num_prompt_tokens: int,
    workers: Sequence[WorkerView],
    config: RoutingConfig,
    *,
    block_size: int,
    max_tokens: int | None = None,
    compat_hash: str | None = None,
    cached_blocks: Mapping[str, int] | None = None,
    stats: RoutingStats | None = None,
) -> RoutingDecision:
    """Routes one request.

    ``workers`` are all registered workers of both roles; ``cached_blocks`` (an index lookup's
    answer, worker id -> leading blocks) replaces their ``cached_blocks`` when given: pass ``{}``
    when the index is unavailable, which routes on load alone. ``compat_hash`` (``None``: any)
    keeps only workers with that KV-layout hash. Picks the decode worker first, lets the decider
    choose the kind from what that worker caches, then picks a prefill worker if disaggregated.
    Raises :class:`NoWorkerAvailable` when no decode worker qualifies.
    """
    if cached_blocks is not None:
        workers = [
            dataclasses.replace(w, cached_blocks=cached_blocks.get(w.worker_id, 0)) for w in workers
        ]
    request = ScoringRequest(request_id, num_prompt_tokens, block_size)
    eligible = apply_filters([ReadyFilter(), CompatibilityFilter(compat_hash)], workers)
    decode_candidates = RoleFilter("decode").filter(eligible)
    prefill_candidates = RoleFilter("prefill").filter(eligible)
    if not decode_candidates:
        raise NoWorkerAvailable(
            request_id,
            f"no ready decode worker with compatibility hash {compat_hash!r} "
            f"({len(workers)} workers registered)",
        )
    picker = WeightedPicker(build_scorers(config))
    decode_pick = picker.pick(request, decode_candidates)
    decode = decode_pick.worker
    decision = Decider(config.disagg_min_uncached_tokens).decide(
        num_prompt_tokens=num_prompt_tokens,
        block_size=block_size,
        decode_cached_blocks=decode.cached_blocks,
        max_tokens=max_tokens,
        has_prefill_worker=bool(prefill_candidates),
    )
    prefill: WorkerView | None = None
    prefill_scores: dict[str, dict[str, float]] = {}
    chosen_cached = {decode.worker_id: decode.cached_blocks}
    if decision.kind is DecisionKind.DISAGGREGATED:
        prefill_pick = picker.pick(request, prefill_candidates)
        prefill = prefill_pick.worker
        prefill_scores = prefill_pick.scores
        chosen_cached[prefill.worker_id] = prefill.cached_blocks
    computing = prefill if prefill is not None else decode
    num_cached_tokens = min(computing.cached_blocks * block_size, num_prompt_tokens)
    if stats is not None:
        stats.observe_decision(decision.kind, decision.reason, num_prompt_tokens, num_cached_tokens)
    result = RoutingDecision(
        request_id=request_id,
        kind=decision.kind,
        reason=decision.reason,
        decode=decode,
        prefill=prefill,
        cached_blocks=chosen_cached,
        num_prompt_tokens=num_prompt_tokens,
        num_uncached_tokens=decision.num_uncached_tokens,
        decode_scores=decode_pick.scores,
        prefill_scores=prefill_scores,
    )
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "request %s: %s (%s) prefill=%s decode=%s prompt_tokens=%d cached_blocks=%s "
            "decode_scores=%s prefill_scores=%s",
            request_id,
            decision.kind.value,
            decision.reason,
            prefill.worker_id if prefill else None,
            decode.worker_id,
            num_prompt_tokens,
            chosen_cached,
            _rounded(decode_pick.scores),
            _rounded(prefill_scores),
        )
    return result


def _rounded(scores: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {w: {k: round(v, 3) for k, v in s.items()} for w, s in scores.items()}

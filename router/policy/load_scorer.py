"""Load scorer: fewer requests on the engine and more free KV cache are better."""

from __future__ import annotations

from collections.abc import Sequence

from router.policy.scorer import ScoringRequest
from router.policy.worker import WorkerView

__all__ = ["LoadScorer"]


class LoadScorer:
    """Mean of ``1 - requests / max(requests over candidates)`` (requests = running + waiting)
    and ``1 - kv_usage`` (KV headroom, clamped to [0, 1])."""

    name = "load"

    def score(self, request: ScoringRequest, workers: Sequence[WorkerView]) -> dict[str, float]:
        most = max((w.num_running + w.num_waiting for w in workers), default=0)
        scores: dict[str, float] = {}
        for w in workers:
            busy = (w.num_running + w.num_waiting) / most if most else 0.0
            headroom = 1.0 - min(max(w.kv_usage, 0.0), 1.0)
            scores[w.worker_id] = 0.5 * (1.0 - busy) + 0.5 * headroom
        return scores

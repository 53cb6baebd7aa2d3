"""Queued-prefill scorer: less prompt work waiting on a worker is better."""

from __future__ import annotations

from collections.abc import Sequence

from router.policy.scorer import ScoringRequest
from router.policy.worker import WorkerView

__all__ = ["QueueScorer"]


class QueueScorer:
    """``1 - queued / max(queued over candidates)``: 1 for an idle worker, 0 for the most loaded
    one, in proportion between. Scaled by the largest queue rather than the spread, so near-equal
    queues give near-equal scores instead of 0 and 1."""

    name = "queue"

    def score(self, request: ScoringRequest, workers: Sequence[WorkerView]) -> dict[str, float]:
        most = max((w.queued_prefill_tokens for w in workers), default=0)
        if most == 0:
            return {w.worker_id: 1.0 for w in workers}
        return {w.worker_id: 1.0 - w.queued_prefill_tokens / most for w in workers}

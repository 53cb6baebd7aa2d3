"""Prefix-overlap scorer: the share of the prompt's blocks a worker already caches."""

from __future__ import annotations

from collections.abc import Sequence

from router.policy.scorer import ScoringRequest
from router.policy.worker import WorkerView

__all__ = ["PrefixScorer"]


class PrefixScorer:
    """``cached_blocks / prompt_blocks``; 0 for every worker when the prompt has no full block."""

    name = "prefix"

    def score(self, request: ScoringRequest, workers: Sequence[WorkerView]) -> dict[str, float]:
        num_blocks = request.num_prompt_blocks
        if num_blocks == 0:
            return {w.worker_id: 0.0 for w in workers}
        return {w.worker_id: min(w.cached_blocks, num_blocks) / num_blocks for w in workers}

"""The weighted picker: the worker with the highest weighted sum of scores wins."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from router.policy.scorer import Scorer, ScoringRequest
from router.policy.worker import WorkerView

__all__ = ["Pick", "WeightedPicker"]

TOTAL = "total"


@dataclass(frozen=True, slots=True)
class Pick:
    """The chosen worker and every candidate's scores (per scorer name, plus ``total``)."""

    worker: WorkerView
    scores: dict[str, dict[str, float]]


class WeightedPicker:
    """Picks ``argmax sum(weight * score)``; ties go to the smallest ``worker_id``.

    Router replicas given the same workers, loads and index answers therefore pick the same
    worker. Scorers with weight 0 are not run.
    """

    def __init__(self, scorers: Sequence[tuple[Scorer, float]]) -> None:
        for scorer, weight in scorers:
            if not weight >= 0 or math.isinf(weight):
                raise ValueError(f"weight of scorer {scorer.name} must be finite and >= 0")
        self.scorers = [(s, w) for s, w in scorers if w > 0]

    def pick(self, request: ScoringRequest, workers: Sequence[WorkerView]) -> Pick:
        """Scores ``workers`` (not empty) and returns the best one."""
        if not workers:
            raise ValueError(f"request {request.request_id}: no candidate worker to pick from")
        scores: dict[str, dict[str, float]] = {w.worker_id: {} for w in workers}
        totals = dict.fromkeys(scores, 0.0)
        for scorer, weight in self.scorers:
            by_worker = scorer.score(request, workers)
            for worker_id in scores:
                value = by_worker[worker_id]
                if not 0.0 <= value <= 1.0:
                    raise ValueError(
                        f"scorer {scorer.name} gave worker {worker_id} {value}, outside [0, 1]"
                    )
                scores[worker_id][scorer.name] = value
                totals[worker_id] += weight * value
        for worker_id, total in totals.items():
            scores[worker_id][TOTAL] = total
        best = min(workers, key=lambda w: (-totals[w.worker_id], w.worker_id))
        return Pick(best, scores)

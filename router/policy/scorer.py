"""The scorer interface: each scorer rates every candidate worker in [0, 1], higher is better."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from router.policy.worker import WorkerView

__all__ = ["Scorer", "ScoringRequest"]


@dataclass(frozen=True, slots=True)
class ScoringRequest:
    """What scorers know about the request being routed."""

    request_id: str
    num_prompt_tokens: int
    block_size: int
    """The engines' KV block size in tokens."""

    def __post_init__(self) -> None:
        if self.num_prompt_tokens < 0:
            raise ValueError(f"request {self.request_id}: num_prompt_tokens must be >= 0")
        if self.block_size < 1:
            raise ValueError(f"request {self.request_id}: block_size must be >= 1")

    @property
    def num_prompt_blocks(self) -> int:
        """Full blocks of the prompt (the ones that can be cached)."""
        return self.num_prompt_tokens // self.block_size


class Scorer(Protocol):
    """Rates candidate workers for one request."""

    name: str
    """Short name, used in decision logs and score breakdowns."""

    def score(self, request: ScoringRequest, workers: Sequence[WorkerView]) -> dict[str, float]:
        """A score in [0, 1] per worker id of ``workers`` (higher is better). Scores may be
        relative to the other candidates, so they are computed for all of them at once."""
        ...

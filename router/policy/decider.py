"""The disaggregation decider: prefill on a prefill worker, or run the request on decode only."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Decider", "Decision", "DecisionKind"]


class DecisionKind(enum.Enum):
    """How a request is served."""

    DISAGGREGATED = "disaggregated"
    """Prefill on a prefill worker, KV shipped to the decode worker, decode there."""
    DECODE_ONLY = "decode_only"
    """The decode worker prefills (what it does not cache) and decodes."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A decider's answer and why (``reason`` is a short, stable token for logs and metrics)."""

    kind: DecisionKind
    reason: str
    num_uncached_tokens: int
    """Prompt tokens the chosen decode worker does not cache."""


class Decider:
    """Disaggregates unless it cannot help.

    Decode-only when no prefill worker is available (``no_prefill_worker``), when one token is
    asked for (``single_token``: the prefill's first token would be the whole answer), or when
    the prompt part the decode worker does not cache is shorter than
    ``disagg_min_uncached_tokens`` (``short_uncached``: cheaper to prefill in place than to ship
    KV). Otherwise ``DISAGGREGATED`` (``uncached_prefill``).
    """

    def __init__(self, disagg_min_uncached_tokens: int) -> None:
        if disagg_min_uncached_tokens < 0:
            raise ValueError("disagg_min_uncached_tokens must be >= 0")
        self.disagg_min_uncached_tokens = disagg_min_uncached_tokens

    def decide(
        self,
        *,
        num_prompt_tokens: int,
        block_size: int,
        decode_cached_blocks: int,
        max_tokens: int | None,
        has_prefill_worker: bool,
    ) -> Decision:
        """Decides for a prompt of ``num_prompt_tokens`` whose first ``decode_cached_blocks``
        blocks the chosen decode worker holds; ``max_tokens`` ``None`` means not limited."""
        cached_tokens = min(decode_cached_blocks * block_size, num_prompt_tokens)
        uncached = num_prompt_tokens - cached_tokens
        if not has_prefill_worker:
            return Decision(DecisionKind.DECODE_ONLY, "no_prefill_worker", uncached)
        if max_tokens == 1:
            return Decision(DecisionKind.DECODE_ONLY, "single_token", uncached)
        if uncached < self.disagg_min_uncached_tokens:
            return Decision(DecisionKind.DECODE_ONLY, "short_uncached", uncached)
        return Decision(DecisionKind.DISAGGREGATED, "uncached_prefill", uncached)

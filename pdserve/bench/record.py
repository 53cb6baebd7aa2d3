"""What the benchmark records about one request: its send time and the arrival time of every chunk.

A *chunk* is one streamed ``GenerateResponse`` that carries at least one token (or some text). The
last message of a stream often carries only the finish reason, usage and timing; it is not a chunk,
and its arrival is kept apart as ``end_s``. Every time is in seconds since the start of the run
(``time.perf_counter`` based), so records of one run share one clock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATUS_OK", "RequestRecord"]

STATUS_OK = "OK"
"""``RequestRecord.status`` of a request whose stream ended without a gRPC error."""


@dataclass
class RequestRecord:
    """The timeline and outcome of one request sent by the benchmark."""

    target: str
    """Name of the target (router) the request was sent to."""
    session: int
    """Index of the workload session (conversation) the request belongs to."""
    turn: int
    """Turn of the session, 0 for the first (and, outside multi-turn workloads, only) one."""
    request_id: str
    """The request id sent to the router."""
    output_len: int
    """Requested number of output tokens (``max_tokens``, with ``ignore_eos``)."""
    prompt_len: int | None = None
    """Prompt length in tokens as sent (token-id prompts); None for text prompts."""
    tenant: int | None = None
    """Tenant index for shared-prefix workloads."""
    scheduled_s: float = 0.0
    """When the arrival process scheduled the request (its session, for later turns)."""
    send_s: float = 0.0
    """When the request was actually sent."""
    chunk_s: list[float] = field(default_factory=list)
    """Arrival time of every chunk, in order."""
    chunk_tokens: list[int] = field(default_factory=list)
    """Number of token ids carried by each chunk."""
    end_s: float | None = None
    """When the stream ended (its last message, or the error), None if it never did."""
    prompt_tokens: int = 0
    """Prompt tokens reported by the router's usage, else ``prompt_len``, else 0."""
    completion_tokens: int = 0
    """Output tokens reported by the router's usage, else the token ids received."""
    cached_prompt_tokens: int = 0
    """Prompt tokens the router reported as served from a cache."""
    finish_reason: str = ""
    """``FinishReason`` name of the last message, empty if none arrived."""
    status: str = STATUS_OK
    """gRPC status code name (``OK``, ``RESOURCE_EXHAUSTED``...) or ``CLIENT_ERROR``."""
    error: str = ""
    """The error message; empty for a successful request."""
    server_timing: dict[str, Any] = field(default_factory=dict)
    """The router's ``RequestTiming`` of the request, as a dict (empty if none arrived)."""

    @property
    def success(self) -> bool:
        """True when the stream ended with OK and delivered at least one chunk."""
        return self.status == STATUS_OK and not self.error and bool(self.chunk_s)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-serialisable dict (the inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """Rebuilds a record from :meth:`to_dict` output; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

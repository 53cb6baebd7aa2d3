"""What the routing policy knows about a worker when it routes one request."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["Role", "WorkerState", "WorkerView"]

Role = Literal["prefill", "decode"]
WorkerState = Literal["starting", "ready", "draining"]


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A worker as seen by the policy: registry data, published load and, for the request being
    routed, how many leading prompt blocks the prefix-cache index says it holds."""

    worker_id: str
    """Unique id; also the deterministic tie-break between equally scored workers."""
    role: Role
    """``prefill`` or ``decode``."""
    endpoint: str
    """``host:port`` of the worker's internal gRPC service."""
    compat_hash: str
    """KV-layout compatibility hash (model, dtype, block size, layout); P/D pairs must match."""
    num_running: int = 0
    """Requests the engine is running."""
    num_waiting: int = 0
    """Requests queued in the engine."""
    queued_prefill_tokens: int = 0
    """Prompt tokens queued or being prefilled, not yet computed."""
    kv_usage: float = 0.0
    """Share of the KV cache in use, in [0, 1]."""
    cached_blocks: int = 0
    """Leading blocks of this request's prompt the worker holds (0 when unknown)."""
    state: WorkerState = "ready"
    """Only ``ready`` workers are routed to."""

    def __post_init__(self) -> None:
        if self.role not in ("prefill", "decode"):
            raise ValueError(f"worker {self.worker_id}: role must be prefill or decode")
        for name in ("num_running", "num_waiting", "queued_prefill_tokens", "cached_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"worker {self.worker_id}: {name} must be >= 0")
        if math.isnan(self.kv_usage):
            raise ValueError(f"worker {self.worker_id}: kv_usage is NaN")

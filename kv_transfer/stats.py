"""Counters of the KV transfers one worker took part in."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TransferStats:
    """Blocks, bytes and time of the KV pulls of one decode worker (or the releases of one
    prefill worker). Thread-safe: vLLM's stat loggers and gRPC handlers both update it."""

    num_transfers: int = 0
    num_blocks: int = 0
    num_bytes: int = 0
    transfer_s: float = 0.0
    num_failed: int = 0
    num_releases: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_request(self, num_blocks: int) -> None:
        """A request whose prompt KV arrives from a prefill worker (counted when admitted)."""
        with self._lock:
            self.num_blocks += num_blocks

    def record_release(self) -> None:
        with self._lock:
            self.num_releases += 1

    def observe_connector_stats(self, data: Mapping[str, Any]) -> None:
        """Folds in one interval of vLLM's NIXL connector statistics (``kv_connector_stats``
        of the scheduler stats: lists of per-transfer durations, bytes and failures)."""
        stats = data.get("NixlConnector", data)
        if not isinstance(stats, Mapping):
            return
        stats = stats.get("data", stats)
        if not isinstance(stats, Mapping):
            return
        with self._lock:
            durations = stats.get("transfer_duration") or []
            self.num_transfers += len(durations)
            self.transfer_s += float(sum(durations))
            self.num_bytes += int(sum(stats.get("bytes_transferred") or []))
            self.num_failed += len(stats.get("num_failed_transfers") or [])

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {
                "num_transfers": self.num_transfers,
                "num_blocks": self.num_blocks,
                "num_bytes": self.num_bytes,
                "transfer_s": self.transfer_s,
                "num_failed": self.num_failed,
                "num_releases": self.num_releases,
            }

"""The prefix-cache index interface.

The index maps block keys (:mod:`pdserve.index.keys`) to the workers whose engines hold the block
in their KV cache. Indexers write to it from the engines' KV events; routers read it to find the
worker that can reuse the longest prefix of a prompt. Because block keys are chained, a block is
only useful when every block before it is held too, so a lookup counts *leading* blocks and stops
at a worker's first miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pdserve.index.keys import BlockKey

__all__ = ["KVIndex"]


@runtime_checkable
class KVIndex(Protocol):
    """Where the fleet's cached KV blocks are; one shared instance per deployment.

    Implementations raise :class:`pdserve.index.errors.KVIndexError` (or a subclass) when their
    backing store fails, never a store-specific exception.
    """

    async def lookup(
        self, keys: Sequence[BlockKey], worker_ids: Sequence[str] | None = None
    ) -> dict[str, int]:
        """For each worker, how many leading blocks of ``keys`` it holds.

        A worker's count stops at its first missing key. ``worker_ids`` restricts the answer to
        those workers (``None``: every worker). Workers with a count of 0 may be omitted.
        """
        ...

    async def add(self, worker_id: str, keys: Sequence[BlockKey]) -> None:
        """Records that ``worker_id`` now holds ``keys`` (in the order they were stored).

        An implementation with a per-worker bound drops the worker's oldest entries beyond it.
        """
        ...

    async def evict(self, worker_id: str, keys: Sequence[BlockKey]) -> None:
        """Records that ``worker_id`` no longer holds ``keys``; unknown keys are ignored."""
        ...

    async def clear(self, worker_id: str) -> None:
        """Drops every entry of ``worker_id`` (its engine restarted, reset or left the fleet)."""
        ...

    async def workers(self) -> set[str]:
        """Workers that hold at least one block."""
        ...

    async def num_blocks(self, worker_id: str) -> int:
        """How many blocks the index records for ``worker_id``."""
        ...

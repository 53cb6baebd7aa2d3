"""An in-process prefix-cache index: the reference model of the Redis index, and a stand-in for
single-process set-ups. Not shared between processes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from pdserve.index.keys import BlockKey

__all__ = ["MemoryIndex"]


class MemoryIndex:
    """A :class:`~pdserve.index.base.KVIndex` held in dictionaries.

    ``max_blocks_per_worker`` bounds each worker's entries like the Redis index does: an add that
    takes a worker above it drops the worker's least recently added keys (re-adding a key makes
    it the newest).
    """

    def __init__(self, max_blocks_per_worker: int | None = None) -> None:
        if max_blocks_per_worker is not None and max_blocks_per_worker < 1:
            raise ValueError(f"max_blocks_per_worker must be >= 1, got {max_blocks_per_worker}")
        self.max_blocks_per_worker = max_blocks_per_worker
        self._holders: dict[BlockKey, set[str]] = {}
        self._by_worker: dict[str, OrderedDict[BlockKey, None]] = {}

    async def lookup(
        self, keys: Sequence[BlockKey], worker_ids: Sequence[str] | None = None
    ) -> dict[str, int]:
        if not keys:
            return {}
        if worker_ids is None:
            alive = set(self._holders.get(keys[0], ()))
        else:
            alive = set(worker_ids)
        counts: dict[str, int] = {}
        for position, key in enumerate(keys, start=1):
            if not alive:
                break
            alive &= self._holders.get(key, set())
            for worker in alive:
                counts[worker] = position
        return counts

    async def add(self, worker_id: str, keys: Sequence[BlockKey]) -> None:
        if not keys:
            return
        held = self._by_worker.setdefault(worker_id, OrderedDict())
        for key in keys:
            held[key] = None
            held.move_to_end(key)
            self._holders.setdefault(key, set()).add(worker_id)
        limit = self.max_blocks_per_worker
        while limit is not None and len(held) > limit:
            oldest, _ = held.popitem(last=False)
            self._drop_holder(oldest, worker_id)

    async def evict(self, worker_id: str, keys: Sequence[BlockKey]) -> None:
        held = self._by_worker.get(worker_id)
        if held is None:
            return
        for key in keys:
            if key in held:
                del held[key]
                self._drop_holder(key, worker_id)
        if not held:
            del self._by_worker[worker_id]

    async def clear(self, worker_id: str) -> None:
        held = self._by_worker.pop(worker_id, None)
        for key in held or ():
            self._drop_holder(key, worker_id)

    async def workers(self) -> set[str]:
        return set(self._by_worker)

    async def num_blocks(self, worker_id: str) -> int:
        return len(self._by_worker.get(worker_id, ()))

    def _drop_holder(self, key: BlockKey, worker_id: str) -> None:
        holders = self._holders.get(key)
        if holders is not None:
            holders.discard(worker_id)
            if not holders:
                del self._holders[key]

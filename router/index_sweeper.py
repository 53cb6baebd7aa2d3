"""Drops prefix-cache index entries of workers that left the fleet.

A worker clears its own entries when it stops cleanly, and its indexer clears them when it
starts again; a worker that dies (kill -9, node loss) does neither. Its registration then expires
(``redis.ttl_s`` after its last heartbeat), and the sweeper, run by every router replica, clears
the index entries of any worker that holds blocks but has no live registration. Clearing is
idempotent, so replicas sweeping at once do no harm. Lookups only ever ask about live workers,
so a dead worker's entries never steer a request even before they are swept; the sweep bounds
the memory they hold.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from pdserve.index import KVIndex, KVIndexError
from pdserve.registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["IndexSweeper"]


class IndexSweeper:
    """Every ``interval_s``, clears the index entries of workers with no live registration."""

    def __init__(self, index: KVIndex, registry: Registry, *, interval_s: float = 5.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.index = index
        self.registry = registry
        self.interval_s = interval_s
        self.num_cleared = 0
        """Workers whose entries this sweeper dropped."""
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def sweep(self) -> list[str]:
        """One pass; returns the worker ids whose entries were dropped."""
        # Index first, registry second: a worker that registers in between is seen as live.
        indexed = await self.index.workers()
        if not indexed:
            return []
        live = {w.worker_id for w in await self.registry.list_workers()}
        gone = sorted(indexed - live)
        for worker_id in gone:
            await self.index.clear(worker_id)
            logger.info("dropped the prefix-cache entries of %s (no live registration)", worker_id)
        self.num_cleared += len(gone)
        return gone

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
                if self._failing:
                    logger.info("index sweep works again")
                    self._failing = False
            except (KVIndexError, aioredis.RedisError, OSError) as exc:
                if not self._failing:
                    logger.warning("index sweep failed (will retry): %s", exc)
                    self._failing = True

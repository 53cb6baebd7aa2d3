"""The router's record of finished requests, for the planner.

Every finished request (completed or failed after routing) becomes a
:class:`~pdserve.planner.signals.RequestRecord`: arrival time, prompt and output tokens, TTFT and
mean inter-token latency. Records queue in memory and a background task appends them to the
Redis stream the planner reads (``{ns}:requests``), in one pipelined round trip per flush. The
request path never waits on Redis: when Redis is slow or down the queue fills up to
``max_pending`` and further records are dropped and counted (logged once), which costs the
planner some samples, never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis

from pdserve.planner.signals import DEFAULT_NAMESPACE, RequestRecord, publish_request_records

logger = logging.getLogger(__name__)

__all__ = ["RequestLog"]


class RequestLog:
    """Buffers finished-request records and flushes them to Redis every ``flush_s``."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        flush_s: float = 0.5,
        max_pending: int = 10_000,
    ) -> None:
        if flush_s <= 0 or max_pending < 1:
            raise ValueError("flush_s must be > 0 and max_pending >= 1")
        self.client = client
        self.namespace = namespace
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.num_published = 0
        self.num_dropped = 0
        self._pending: list[RequestRecord] = []
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def record(self, record: RequestRecord) -> None:
        """Queues one record (never blocks; drops it when the queue is full)."""
        if len(self._pending) >= self.max_pending:
            if not self.num_dropped:
                logger.warning(
                    "request records are not reaching Redis; dropping them beyond %d pending",
                    self.max_pending,
                )
            self.num_dropped += 1
            return
        self._pending.append(record)

    async def flush(self) -> None:
        """Appends the pending records; on failure they stay pending for the next flush."""
        batch = self._pending
        if not batch:
            return
        self._pending = []
        try:
            await publish_request_records(self.client, batch, self.namespace)
        except (aioredis.RedisError, OSError) as exc:
            # Put them back ahead of newer ones, within the bound.
            self._pending = (batch + self._pending)[: self.max_pending]
            if not self._failing:
                logger.warning("cannot append request records to Redis (will retry): %s", exc)
                self._failing = True
            return
        self.num_published += len(batch)
        if self._failing:
            logger.info("request records reach Redis again")
            self._failing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(aioredis.RedisError, OSError):
            await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

"""The router's view of the fleet: live registrations from Redis and a channel per worker.

The view is refreshed in the background (every ``refresh_s``), so a routing decision reads
memory, not Redis. When Redis is unreachable the last known view is kept and the failure is
logged once; it recovers by itself when Redis returns. A worker whose registration vanished
while its last heartbeat is still within the TTL (Redis restarted empty) stays in the view
until it registers again or that TTL passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

import grpc
import redis.asyncio as aioredis

from pdserve.registry import Registry, WorkerInfo
from pdserve.serving import channel_options
from pdserve.v1 import worker_pb2_grpc

logger = logging.getLogger(__name__)


class WorkerView:
    """Registered workers, refreshed from the registry, with a gRPC stub per endpoint."""

    def __init__(
        self, registry: Registry, *, refresh_s: float = 0.5, max_message_bytes: int = 16 << 20
    ) -> None:
        self.registry = registry
        self.refresh_s = refresh_s
        self.max_message_bytes = max_message_bytes
        self.workers: dict[str, WorkerInfo] = {}
        self.refreshed_at = 0.0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._task: asyncio.Task[None] | None = None
        self._registry_down = False
        self.excluded: dict[str, float] = {}
        """Workers that failed a call recently: worker id -> monotonic time until which they
        are skipped (they are re-admitted when the time passes or their registration is new)."""
        self.inflight_requests: dict[str, int] = {}
        """This router's requests in flight per worker id."""
        self.inflight_prefill_tokens: dict[str, int] = {}
        """Prompt tokens this router has sent to each prefill worker and not yet seen done."""

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    async def refresh(self) -> None:
        try:
            workers = await self.registry.list_workers()
        except (aioredis.RedisError, OSError) as exc:
            if not self._registry_down:
                logger.warning("worker registry unreachable, keeping the last view: %s", exc)
                self._registry_down = True
            return
        if self._registry_down:
            logger.info("worker registry reachable again")
            self._registry_down = False
        fresh = {w.worker_id: w for w in workers}
        # A registration can vanish without its worker dying: a restarted (empty) Redis, until
        # the worker's next heartbeat writes it again. Keep a vanished worker while its last
        # heartbeat is within the TTL; one that really died was already that old when its key
        # expired, so it leaves at once.
        wall = time.time()
        for worker_id, known in self.workers.items():
            if worker_id not in fresh and known.state != "draining":
                if wall - known.updated_at < self.registry.ttl_s:
                    fresh[worker_id] = known
        self.workers = fresh
        self.refreshed_at = time.monotonic()
        live = {w.endpoint for w in self.workers.values()}
        for endpoint in [e for e in self._channels if e not in live]:
            await self._channels.pop(endpoint).close()

    def ready(self, role: str, model: str) -> list[WorkerInfo]:
        """Workers of ``role`` serving ``model`` that take new requests, sorted by id."""
        now = time.monotonic()
        return sorted(
            (
                w
                for w in self.workers.values()
                if w.role == role
                and w.model == model
                and w.state == "ready"
                and self.excluded.get(w.worker_id, 0.0) <= now
            ),
            key=lambda w: w.worker_id,
        )

    @contextlib.contextmanager
    def track(self, worker_id: str, prefill_tokens: int = 0) -> Iterator[None]:
        """Counts a call to ``worker_id`` as in flight (and its prompt tokens as queued prefill
        work) for as long as the block runs."""
        self.inflight_requests[worker_id] = self.inflight_requests.get(worker_id, 0) + 1
        self.inflight_prefill_tokens[worker_id] = (
            self.inflight_prefill_tokens.get(worker_id, 0) + prefill_tokens
        )
        try:
            yield
        finally:
            left = self.inflight_requests[worker_id] - 1
            tokens = self.inflight_prefill_tokens[worker_id] - prefill_tokens
            if left:
                self.inflight_requests[worker_id] = left
                self.inflight_prefill_tokens[worker_id] = tokens
            else:
                del self.inflight_requests[worker_id]
                del self.inflight_prefill_tokens[worker_id]

    def exclude(self, worker_id: str, seconds: float = 5.0) -> None:
        """Skips a worker that just failed until its registration shows it back."""
        self.excluded[worker_id] = time.monotonic() + seconds

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                endpoint, options=channel_options(self.max_message_bytes)
            )
            self._channels[endpoint] = channel
        return channel

    def prefill_stub(self, worker: WorkerInfo) -> worker_pb2_grpc.PrefillWorkerStub:
        return worker_pb2_grpc.PrefillWorkerStub(self._channel(worker.endpoint))

    def decode_stub(self, worker: WorkerInfo) -> worker_pb2_grpc.DecodeWorkerStub:
        return worker_pb2_grpc.DecodeWorkerStub(self._channel(worker.endpoint))

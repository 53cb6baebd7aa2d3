"""The worker registry in Redis: who serves, where, in which role, with what load.

Key schema (``ns`` is the namespace, ``pdserve`` by default):

- ``{ns}:worker:{worker_id}`` HASH, expiring ``ttl_s`` after the last heartbeat. Fields:
  ``worker_id``, ``role`` (``prefill`` | ``decode``), ``state`` (``ready`` | ``draining``),
  ``endpoint`` (host:port of the worker's gRPC service), ``model``, ``compat_hash``,
  ``block_size``, ``max_model_len``, ``num_running``, ``num_waiting``, ``kv_usage``,
  ``queued_prefill_tokens``, ``updated_at`` (unix seconds). Numbers are stored as strings.
- ``{ns}:workers`` SET of worker ids. Members whose hash has expired are stale: readers ignore
  them and remove them.

A worker that stops heart-beating drops out of routing when its hash expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import redis.asyncio as aioredis

logger = logging.getLogger(__name__)

__all__ = ["Heartbeat", "Registry", "WorkerInfo"]

Role = Literal["prefill", "decode"]


@dataclass
class WorkerInfo:
    """One worker's registration and latest load."""

    worker_id: str
    role: str
    endpoint: str
    model: str
    compat_hash: str = ""
    block_size: int = 0
    max_model_len: int = 0
    state: str = "ready"
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    queued_prefill_tokens: int = 0
    updated_at: float = 0.0

    def to_redis(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_redis(cls, data: dict[str, str]) -> WorkerInfo:
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            raw = data[f.name]
            kwargs[f.name] = (
                int(float(raw)) if f.type == "int" else float(raw) if f.type == "float" else raw
            )
        return cls(**kwargs)


def _text(value: bytes | str) -> str:
    # The registry works over clients with or without decode_responses.
    return value.decode() if isinstance(value, bytes) else str(value)


class Registry:
    """Reads and writes worker registrations."""

    def __init__(self, client: aioredis.Redis, *, namespace: str = "pdserve", ttl_s: float = 5.0):
        self.client = client
        self.namespace = namespace
        self.ttl_s = ttl_s

    def _key(self, worker_id: str) -> str:
        return f"{self.namespace}:worker:{worker_id}"

    @property
    def _set_key(self) -> str:
        return f"{self.namespace}:workers"

    async def register(self, info: WorkerInfo) -> None:
        """Writes (or refreshes) a registration; it expires ``ttl_s`` from now."""
        info.updated_at = time.time()
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(info.worker_id), mapping=info.to_redis())  # type: ignore[arg-type]
            pipe.pexpire(self._key(info.worker_id), int(self.ttl_s * 1000))
            pipe.sadd(self._set_key, info.worker_id)
            await pipe.execute()

    async def deregister(self, worker_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(worker_id))
            pipe.srem(self._set_key, worker_id)
            await pipe.execute()

    async def set_state(self, worker_id: str, state: str) -> None:
        await self.client.hset(self._key(worker_id), "state", state)

    async def list_workers(self) -> list[WorkerInfo]:
        """The live registrations; stale set members are removed on the way."""
        ids = sorted(_text(i) for i in await self.client.smembers(self._set_key))
        if not ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hgetall(self._key(worker_id))
            rows = await pipe.execute()
        workers: list[WorkerInfo] = []
        stale: list[str] = []
        for worker_id, row in zip(ids, rows, strict=True):
            if not row:
                stale.append(worker_id)
                continue
            try:
                workers.append(WorkerInfo.from_redis({_text(k): _text(v) for k, v in row.items()}))
            except (TypeError, ValueError) as exc:
                logger.warning("skipping malformed registration of %s: %s", worker_id, exc)
        if stale:
            await self.client.srem(self._set_key, *stale)
        return workers


class Heartbeat:
    """Re-registers a worker every ``interval_s`` with fresh load figures until stopped.

    Redis outages are logged once and retried; the worker keeps serving meanwhile.
    """

    def __init__(
        self,
        registry: Registry,
        info: Callable[[], WorkerInfo],
        *,
        interval_s: float = 1.0,
        on_beat: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.registry = registry
        self.info = info
        self.interval_s = interval_s
        self.on_beat = on_beat
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        await self.registry.register(self.info())
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.registry.register(self.info())
                if self.on_beat is not None:
                    await self.on_beat()
                if self._failing:
                    logger.info("registry reachable again")
                    self._failing = False
            except (aioredis.RedisError, OSError) as exc:
                if not self._failing:
                    logger.warning("heartbeat to the registry failed (will retry): %s", exc)
                    self._failing = True

    async def stop(self, *, deregister: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if deregister:
            try:
                await self.registry.deregister(self.info().worker_id)
            except (aioredis.RedisError, OSError) as exc:
                logger.warning("could not deregister: %s", exc)

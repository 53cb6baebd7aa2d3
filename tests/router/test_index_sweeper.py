"""The index sweeper against a real redis-server: entries of workers without a live
registration are dropped, live workers' entries stay."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from pdserve.index import RedisIndex, block_keys
from pdserve.launcher import start_redis
from pdserve.registry import Registry, WorkerInfo
from router.index_sweeper import IndexSweeper


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(Path(tmp_path_factory.mktemp("sweeper")) / "redis.log")
    yield url
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
async def parts(redis_url: str) -> AsyncIterator[tuple[RedisIndex, Registry]]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    namespace = uuid.uuid4().hex[:8]
    yield (
        RedisIndex(client, namespace=f"{namespace}:idx"),
        Registry(client, namespace=namespace, ttl_s=0.3),
    )
    await client.aclose()


KEYS = block_keys(list(range(512)), 128)


async def test_sweep_drops_only_workers_without_registration(
    parts: tuple[RedisIndex, Registry],
) -> None:
    index, registry = parts
    await registry.register(WorkerInfo("alive", "prefill", "h:1", "m"))
    await index.add("alive", KEYS)
    await index.add("dead", KEYS)

    gone = await IndexSweeper(index, registry).sweep()

    assert gone == ["dead"]
    assert await index.workers() == {"alive"}
    assert await index.lookup(KEYS) == {"alive": len(KEYS)}


async def test_expired_registration_is_swept_by_the_running_sweeper(
    parts: tuple[RedisIndex, Registry],
) -> None:
    index, registry = parts
    await registry.register(WorkerInfo("w", "decode", "h:1", "m"))  # expires after 0.3 s
    await index.add("w", KEYS)
    sweeper = IndexSweeper(index, registry, interval_s=0.1)
    await sweeper.start()
    try:
        assert "w" in await index.workers()  # still registered at first
        deadline = time.monotonic() + 10
        while True:
            if "w" not in await index.workers():
                break
            assert time.monotonic() < deadline, "the sweeper did not drop w's entries in 10 s"
            await asyncio.sleep(0.05)
    finally:
        await sweeper.stop()
    assert sweeper.num_cleared == 1
    assert await index.num_blocks("w") == 0


def test_interval_must_be_positive(parts: tuple[RedisIndex, Registry]) -> None:
    index, registry = parts
    with pytest.raises(ValueError, match="interval_s"):
        IndexSweeper(index, registry, interval_s=0)

"""Redis-specific behaviour: key schema, one round trip per lookup, script reloads, failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from index_redis_server import RedisServer, free_port, start_redis_server

from pdserve.index import BlockKey, IndexUnavailable, KVIndexError, RedisIndex, block_keys
from pdserve.launcher import start_redis


async def test_key_schema(redis_index: RedisIndex, redis_url: str) -> None:
    key = BlockKey(0xABC)
    await redis_index.add("w1", [key])
    ns = redis_index.namespace
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await client.smembers(f"{ns}:blk:0000000000000abc") == {"w1"}
        assert await client.zrange(f"{ns}:wblk:w1", 0, -1) == ["0000000000000abc"]
        assert await client.smembers(f"{ns}:workers") == {"w1"}
        await redis_index.clear("w1")
        assert await client.keys(f"{ns}:*") == []
    finally:
        await client.aclose()


async def test_lookup_of_an_8k_prompt_is_one_round_trip(
    redis_index: RedisIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = block_keys(list(range(8192)), 128)
    assert len(prompt) == 64
    for worker in range(8):
        await redis_index.add(f"w{worker}", prompt[: 8 * worker])
    client: Any = redis_index._redis
    sent: list[str] = []
    original = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]))
        return await original(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", counting)
    answer = await redis_index.lookup(prompt)
    assert sent == ["EVALSHA"]
    assert answer == {f"w{w}": 8 * w for w in range(1, 8)}


async def test_scripts_are_sent_again_after_a_script_flush(
    redis_index: RedisIndex, redis_url: str
) -> None:
    await redis_index.add("w", [BlockKey(1), BlockKey(2)])
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.script_flush()
        assert await redis_index.lookup([BlockKey(1), BlockKey(2)]) == {"w": 2}
        await client.script_flush()
        await redis_index.add("w", [BlockKey(3)])
        await client.script_flush()
        await redis_index.evict("w", [BlockKey(1)])
    finally:
        await client.aclose()
    assert await redis_index.lookup([BlockKey(2), BlockKey(3)]) == {"w": 2}
    assert redis_index.stats.num_script_reloads == 3


async def test_unreachable_redis_raises_index_unavailable() -> None:
    index = RedisIndex.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        with pytest.raises(IndexUnavailable):
            await index.lookup([BlockKey(1)])
        with pytest.raises(IndexUnavailable):
            await index.add("w", [BlockKey(1)])
        with pytest.raises(KVIndexError):
            await index.workers()
        assert index.stats.num_lookup_errors == 1
    finally:
        await index.aclose()


async def test_redis_dying_under_a_live_index_raises_index_unavailable(tmp_path: Path) -> None:
    server = start_redis_server(tmp_path / "redis")
    index = RedisIndex.from_url(server.url, timeout_s=0.5)
    try:
        await index.add("w", [BlockKey(1)])
        assert await index.lookup([BlockKey(1)]) == {"w": 1}
        server.stop()
        with pytest.raises(IndexUnavailable):
            await index.lookup([BlockKey(1)])
    finally:
        server.stop()
        await index.aclose()


async def test_first_calls_after_a_redis_restart_succeed(tmp_path: Path) -> None:
    """A restarted Redis leaves the client's pooled connections broken; the index's first
    write must not be lost to that (the engine would never report those blocks again)."""
    server = start_redis_server(tmp_path / "redis")
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    index = RedisIndex.from_url(server.url, timeout_s=0.5)
    try:
        await index.add("w", [BlockKey(1)])
        assert await index.lookup([BlockKey(1)]) == {"w": 1}
        server.stop()
        process, url = start_redis(tmp_path / "redis" / "again.log", port=port)
        server = RedisServer(url, process)
        await index.add("w", [BlockKey(2)])  # the first call on the broken connection
        assert await index.lookup([BlockKey(2)]) == {"w": 1}
        assert index.stats.num_script_reloads >= 1  # the new Redis had no scripts
    finally:
        server.stop()
        await index.aclose()


def test_invalid_settings_are_rejected(redis_url: str) -> None:
    with pytest.raises(ValueError):
        RedisIndex.from_url(redis_url, max_blocks_per_worker=0)
    with pytest.raises(ValueError):
        RedisIndex.from_url(redis_url, timeout_s=0)
    with pytest.raises(ValueError):
        RedisIndex.from_url(redis_url, namespace="")

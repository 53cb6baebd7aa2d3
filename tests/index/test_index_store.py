"""Index behaviour, run against both the in-memory reference and the Redis index."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from pdserve.index import BlockKey, KVIndex, MemoryIndex, RedisIndex


def keys(*values: int) -> list[BlockKey]:
    return [BlockKey(v) for v in values]


async def _make_index(
    kind: str, redis_url: str, max_blocks_per_worker: int | None
) -> AsyncIterator[KVIndex]:
    if kind == "memory":
        yield MemoryIndex(max_blocks_per_worker=max_blocks_per_worker)
        return
    index = RedisIndex.from_url(
        redis_url,
        namespace=f"test:{uuid.uuid4().hex[:8]}",
        max_blocks_per_worker=max_blocks_per_worker,
    )
    yield index
    await index.aclose()


@pytest.fixture(params=["memory", "redis"])
async def bounded_index(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[KVIndex]:
    """An index of each kind, bounded to 4 blocks per worker."""
    async for index in _make_index(request.param, redis_url, 4):
        yield index


@pytest.fixture(params=["memory", "redis"])
async def index(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[KVIndex]:
    """An unbounded index of each kind."""
    async for each in _make_index(request.param, redis_url, None):
        yield each


async def test_lookup_counts_leading_blocks_and_stops_at_first_miss(index: KVIndex) -> None:
    await index.add("a", keys(1, 2, 4, 5))
    await index.add("b", keys(1, 2, 3))
    await index.add("c", keys(2, 3, 4))
    assert await index.lookup(keys(1, 2, 3, 4, 5)) == {"a": 2, "b": 3}
    assert await index.lookup(keys(9, 1, 2)) == {}
    assert await index.lookup([]) == {}


async def test_lookup_restricted_to_workers(index: KVIndex) -> None:
    await index.add("a", keys(1, 2))
    await index.add("b", keys(1, 2, 3))
    assert await index.lookup(keys(1, 2, 3), ["a", "zz"]) == {"a": 2}
    assert await index.lookup(keys(1, 2, 3), ["b"]) == {"b": 3}
    assert await index.lookup(keys(1, 2, 3), []) == {}


async def test_evict_breaks_the_chain_for_that_worker_only(index: KVIndex) -> None:
    await index.add("a", keys(1, 2, 3))
    await index.add("b", keys(1, 2, 3))
    await index.evict("a", keys(2, 77))
    assert await index.lookup(keys(1, 2, 3)) == {"a": 1, "b": 3}
    assert await index.num_blocks("a") == 2
    await index.evict("a", keys(1, 3))
    assert await index.workers() == {"b"}


async def test_clear_drops_one_worker(index: KVIndex) -> None:
    await index.add("a", keys(*range(1, 6000)))
    await index.add("b", keys(1, 2))
    assert await index.workers() == {"a", "b"}
    await index.clear("a")
    assert await index.workers() == {"b"}
    assert await index.num_blocks("a") == 0
    assert await index.lookup(keys(1, 2)) == {"b": 2}
    await index.clear("never-seen")
    await index.add("a", keys(1))
    assert await index.lookup(keys(1, 2)) == {"a": 1, "b": 2}


async def test_memory_bound_evicts_the_oldest(bounded_index: KVIndex) -> None:
    await bounded_index.add("a", keys(1, 2, 3, 4))
    await bounded_index.add("b", keys(1, 2, 3, 4))
    await bounded_index.add("a", keys(1))  # 1 becomes the newest of a
    await bounded_index.add("a", keys(5))  # a is over its bound: drops 2, its oldest
    assert await bounded_index.num_blocks("a") == 4
    assert await bounded_index.lookup(keys(1, 2, 3)) == {"a": 1, "b": 3}
    assert await bounded_index.lookup(keys(3, 4, 5)) == {"a": 3, "b": 2}
    await bounded_index.add("a", keys(10, 11, 12, 13, 14, 15))  # more than the bound at once
    assert await bounded_index.num_blocks("a") == 4
    assert await bounded_index.lookup(keys(12, 13, 14, 15)) == {"a": 4}
    assert await bounded_index.lookup(keys(1)) == {"b": 1}

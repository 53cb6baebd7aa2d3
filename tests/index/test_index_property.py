"""Property: random store/remove/clear streams over several workers leave the Redis index and the
in-memory reference answering every lookup alike."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdserve.index import BlockKey, MemoryIndex, RedisIndex

WORKERS = ["w0", "w1", "w2", "w3"]
# A small key universe, so workers share blocks and lookups hit often.
KEYS = [BlockKey(k) for k in (1, 2, 3, 4, 5, 6, 7, 8, 2**64 - 1, 0)]


@dataclass(frozen=True)
class Op:
    kind: str  # add | evict | clear | lookup
    worker: str = ""
    keys: tuple[BlockKey, ...] = ()
    candidates: tuple[str, ...] | None = None


key_lists = st.lists(st.sampled_from(KEYS), max_size=8).map(tuple)
ops = st.one_of(
    st.builds(Op, st.just("add"), st.sampled_from(WORKERS), key_lists),
    st.builds(Op, st.just("evict"), st.sampled_from(WORKERS), key_lists),
    st.builds(Op, st.just("clear"), st.sampled_from(WORKERS)),
    st.builds(
        Op,
        st.just("lookup"),
        st.just(""),
        key_lists,
        st.none() | st.lists(st.sampled_from([*WORKERS, "ghost"]), max_size=3).map(tuple),
    ),
)


async def _check(redis_url: str, stream: list[Op], bound: int | None) -> None:
    reference = MemoryIndex(max_blocks_per_worker=bound)
    namespace = f"prop:{uuid.uuid4().hex[:8]}"
    index = RedisIndex.from_url(redis_url, namespace=namespace, max_blocks_per_worker=bound)
    try:
        for step, op in enumerate(stream):
            if op.kind == "add":
                await index.add(op.worker, op.keys)
                await reference.add(op.worker, op.keys)
            elif op.kind == "evict":
                await index.evict(op.worker, op.keys)
                await reference.evict(op.worker, op.keys)
            elif op.kind == "clear":
                await index.clear(op.worker)
                await reference.clear(op.worker)
            else:
                got = await index.lookup(op.keys, op.candidates)
                want = await reference.lookup(op.keys, op.candidates)
                assert got == want, f"step {step}: {op}: redis {got} != reference {want}"
        assert await index.workers() == await reference.workers()
        for worker in WORKERS:
            assert await index.num_blocks(worker) == await reference.num_blocks(worker)
            # Every prefix of the universe, from every start, answers alike.
            for start in range(len(KEYS)):
                got = await index.lookup(KEYS[start:])
                assert got == await reference.lookup(KEYS[start:]), f"final lookup from {start}"
    finally:
        client = aioredis.Redis.from_url(redis_url)
        async for name in client.scan_iter(f"{namespace}:*"):
            await client.delete(name)
        await client.aclose()
        await index.aclose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(ops, max_size=40), bound=st.sampled_from([None, 1, 3, 6]))
def test_redis_index_agrees_with_the_reference(
    redis_url: str, stream: list[Op], bound: int | None
) -> None:
    asyncio.run(_check(redis_url, stream, bound))

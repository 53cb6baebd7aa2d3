"""Prefix-cache index lookup latency: the Lua script path vs naive pipelined SMEMBERS.

Starts its own redis-server (no persistence) on a free port, fills the index with about 100k
blocks over 8 workers, then times lookups of an 8k-token prompt (64 blocks of 128 tokens) both
ways, the cost of computing block keys, and the whole routing decision (block keys, lookup and
the routing policy, through the router's ``CacheAwareSelector``). Usage::

    .venv/bin/python benchmarks/index_lookup.py [--lookups 2000] [--blocks 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis
import redis.asyncio as aioredis

from pdserve.config import RoutingConfig
from pdserve.index import BlockKey, RedisIndex, block_keys
from pdserve.launcher import start_redis
from pdserve.registry import Registry, WorkerInfo
from pdserve.sampling import Sampling
from router.dispatch import RequestState
from router.selection import CacheAwareSelector
from router.workers import WorkerView

BLOCK_SIZE = 128
PROMPT_TOKENS = 8192
NUM_WORKERS = 8


async def _naive_lookup(
    client: aioredis.Redis, namespace: str, keys: list[BlockKey]
) -> dict[str, int]:
    """What a client-side walk costs: 64 SMEMBERS in one pipeline, leading counts in Python."""
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.smembers(f"{namespace}:blk:{key:016x}")
        holders = await pipe.execute()
    alive = {w.decode() for w in holders[0]} if holders else set()
    counts: dict[str, int] = {}
    for position, members in enumerate(holders, start=1):
        alive &= {m.decode() for m in members}
        if not alive:
            break
        for worker in alive:
            counts[worker] = position
    return counts


async def _time(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    for _ in range(50):
        await fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return samples


async def _time_decisions(index: RedisIndex, prompt: list[int], n: int) -> list[float]:
    """What the router spends choosing workers for one request: the cache-aware selector over
    eight registered workers (the ``w*`` of the index, half prefill, half decode)."""
    view = WorkerView(Registry(aioredis.Redis()))  # its registry is not read here
    view.workers = {
        f"w{i}": WorkerInfo(
            worker_id=f"w{i}",
            role="prefill" if i % 2 == 0 else "decode",
            endpoint=f"127.0.0.1:{6000 + i}",
            model="m",
            compat_hash="c",
            block_size=BLOCK_SIZE,
            num_running=i,
        )
        for i in range(NUM_WORKERS)
    }
    selector = CacheAwareSelector(view, index, RoutingConfig())
    state = RequestState(
        request_id="bench",
        prompt_ids=prompt,
        sampling=Sampling(max_tokens=16),
        model="m",
        deadline=time.monotonic() + 3600,
    )
    route = await selector.select(state)
    assert route.prefill is not None and route.prefill.worker_id in ("w0", "w2"), route
    return await _time(lambda: selector.select(state), n)


def _quantiles_us(samples: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1e6, cuts[89] * 1e6, cuts[98] * 1e6


async def _run(url: str, num_lookups: int, num_blocks: int) -> None:
    rng = random.Random(7)
    index = RedisIndex.from_url(url, namespace="bench", max_blocks_per_worker=None)
    info = redis.Redis.from_url(url)
    used_before = int(info.info("memory")["used_memory"])
    blocks_per_prompt = PROMPT_TOKENS // BLOCK_SIZE
    num_prompts = num_blocks // blocks_per_prompt
    entries = 0
    prompts: list[list[BlockKey]] = []
    prompt_tokens: list[int] = []
    for p in range(num_prompts):
        tokens = [rng.randrange(49_152) for _ in range(PROMPT_TOKENS)]
        keys = block_keys(tokens, BLOCK_SIZE)
        if p == 0:
            prompt_tokens = tokens
        prompts.append(keys)
        for worker in rng.sample(range(NUM_WORKERS), k=1 + p % 2):
            await index.add(f"w{worker}", keys)
            entries += len(keys)
    target = prompts[0]
    await index.add("w0", target)
    await index.add("w1", target)
    await index.add("w2", target[:32])
    used_after = int(info.info("memory")["used_memory"])
    info.close()

    expected = {"w0": 64, "w1": 64, "w2": 32}
    lua_answer = await index.lookup(target)
    client = aioredis.Redis.from_url(url)
    naive_answer = await _naive_lookup(client, "bench", target)
    assert lua_answer == naive_answer, (lua_answer, naive_answer)
    assert all(lua_answer.get(w) == c for w, c in expected.items()), lua_answer

    await client.config_resetstat()
    lua = await _time(lambda: index.lookup(target), num_lookups)
    evalsha = (await client.info("commandstats"))["cmdstat_evalsha"]
    script_us = float(evalsha["usec_per_call"])
    naive = await _time(lambda: _naive_lookup(client, "bench", target), num_lookups)
    redis_ping = await _time(lambda: client.ping(), num_lookups)  # type: ignore[arg-type]

    decision = await _time_decisions(index, prompt_tokens, num_lookups)

    tokens = list(range(PROMPT_TOKENS))
    reps = 500
    key_s = min(timeit.repeat(lambda: block_keys(tokens, BLOCK_SIZE), number=reps, repeat=5))
    key_us_per_1k = key_s / reps * 1e6 / (PROMPT_TOKENS / 1000)

    print(
        f"index: {len(prompts) * blocks_per_prompt:,} distinct blocks, "
        f"{entries:,} (block, worker) entries, "
        f"{NUM_WORKERS} workers; Redis memory {(used_after - used_before) / entries:.0f} B/entry"
    )
    print(
        f"lookup: {PROMPT_TOKENS} tokens = {len(target)} blocks of {BLOCK_SIZE}, "
        f"{num_lookups} lookups each, one asyncio client, loopback\n"
    )
    print(f"{'path':<38}{'p50 us':>10}{'p90 us':>10}{'p99 us':>10}")
    for name, samples in (
        ("Lua script (EVALSHA, 1 command)", lua),
        ("pipelined SMEMBERS x64", naive),
        ("PING (round-trip floor)", redis_ping),
        ("routing decision (keys+lookup+plan)", decision),
    ):
        p50, p90, p99 = _quantiles_us(samples)
        print(f"{name:<38}{p50:>10.0f}{p90:>10.0f}{p99:>10.0f}")
    print(f"\nblock keys (blake2b-64, {BLOCK_SIZE}-token blocks): {key_us_per_1k:.1f} us/1k tokens")
    print(f"Lua script time inside Redis: {script_us:.0f} us per lookup (INFO commandstats)")
    print(f"load average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    await client.aclose()
    await index.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        process, url = start_redis(Path(workdir) / "redis.log")
        try:
            asyncio.run(_run(url, args.lookups, args.blocks))
        finally:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()

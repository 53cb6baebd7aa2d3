"""The prefix-cache index in Redis, shared by every router replica and indexer.

Key schema (``{ns}`` is the namespace, ``pdserve:idx`` by default; ``{key}`` is a block key as
16 lower-case hex digits; ``{worker}`` a worker id)::

    {ns}:blk:{key}       SET   worker ids whose engine holds the block
    {ns}:wblk:{worker}   ZSET  the worker's block keys (hex), scored by insertion sequence
    {ns}:wseq:{worker}   STR   the worker's insertion sequence counter (INCRBY)
    {ns}:workers         SET   worker ids with at least one block

``{ns}:blk:*`` answers lookups; ``{ns}:wblk:{worker}`` is its per-worker inverse, which lets
``clear`` drop a dead or reset worker's entries and bounds the memory a worker can take: an add
that takes a worker above ``max_blocks_per_worker`` pops the lowest-scored (least recently
added) members of its ZSET and removes the worker from those blocks' SETs, in the same script.
Re-adding a key gives it a new score, so the bound keeps the most recently stored blocks, which
is what the engine's own LRU cache keeps too. Both structures are only changed by the scripts
below, each atomic, so they never disagree.

Every operation is one round trip: ``lookup`` is one EVALSHA of a Lua script that walks the
prompt's keys in order with SMISMEMBER over the workers still matching, stops at the first key
none of them holds, and returns each worker's leading count; ``add``/``evict`` send one script
call per 1,024 keys in one pipeline; ``clear`` pops a worker's ZSET 4,096 members per script
call, so a large worker never blocks Redis for long. Scripts are called by SHA and sent again
(EVAL / SCRIPT LOAD) when Redis answers NOSCRIPT, e.g. after a restart; a call that fails on a
broken connection (a Redis restart leaves the pooled ones broken) is retried on a new one.

The scripts touch keys they compute from their arguments, so this needs a standalone Redis (or
a replica set), not Redis Cluster.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from pdserve.index.errors import IndexCommandError, IndexUnavailable
from pdserve.index.keys import BlockKey

__all__ = ["DEFAULT_MAX_BLOCKS_PER_WORKER", "DEFAULT_NAMESPACE", "RedisIndex", "RedisIndexStats"]

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "pdserve:idx"
DEFAULT_MAX_BLOCKS_PER_WORKER = 262_144
_WRITE_CHUNK = 1024
_CLEAR_CHUNK = 4096
_CONNECTION_ATTEMPTS = 3

T = TypeVar("T")

_LOOKUP_LUA = """
-- KEYS: {ns}:blk:{key} in prompt order
-- ARGV: candidate worker ids (none: the holders of the first block)
local alive
if #ARGV > 0 then alive = ARGV else alive = redis.call('SMEMBERS', KEYS[1]) end
local n = #alive
local counts = {}
for i = 1, #KEYS do
  if n == 0 then break end
  local held = redis.call('SMISMEMBER', KEYS[i], unpack(alive))
  local still = {}
  local m = 0
  for j = 1, n do
    if held[j] == 1 then
      m = m + 1
      still[m] = alive[j]
      counts[alive[j]] = i
    end
  end
  alive = still
  n = m
end
local out = {}
for worker, count in pairs(counts) do
  out[#out + 1] = worker
  out[#out + 1] = count
end
return out
"""

_ADD_LUA = """
-- KEYS[1] {ns}:wblk:{w}, KEYS[2] {ns}:wseq:{w}, KEYS[3] {ns}:workers
-- ARGV[1] worker, ARGV[2] max blocks (0: no bound), ARGV[3] '{ns}:blk:', ARGV[4..] keys (hex)
local worker = ARGV[1]
local cap = tonumber(ARGV[2])
local prefix = ARGV[3]
local n = #ARGV - 3
local seq = redis.call('INCRBY', KEYS[2], n) - n
for i = 4, #ARGV do
  seq = seq + 1
  redis.call('ZADD', KEYS[1], seq, ARGV[i])
  redis.call('SADD', prefix .. ARGV[i], worker)
end
redis.call('SADD', KEYS[3], worker)
local dropped = 0
if cap > 0 then
  local over = redis.call('ZCARD', KEYS[1]) - cap
  if over > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[1], over)
    for j = 1, #popped, 2 do
      redis.call('SREM', prefix .. popped[j], worker)
    end
    dropped = over
  end
end
return dropped
"""

_EVICT_LUA = """
-- KEYS[1] {ns}:wblk:{w}, KEYS[2] {ns}:workers; ARGV[1] worker, ARGV[2] '{ns}:blk:', ARGV[3..] keys
local removed = 0
for i = 3, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('SREM', ARGV[2] .. ARGV[i], ARGV[1])
    removed = removed + 1
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
end
return removed
"""

_CLEAR_LUA = """
-- KEYS[1] {ns}:wblk:{w}, KEYS[2] {ns}:workers, KEYS[3] {ns}:wseq:{w}
-- ARGV[1] worker, ARGV[2] '{ns}:blk:', ARGV[3] members to pop
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[3]))
for j = 1, #popped, 2 do
  redis.call('SREM', ARGV[2] .. popped[j], ARGV[1])
end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
end
return left
"""


@dataclass(frozen=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> _Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


_LOOKUP = _Script.of(_LOOKUP_LUA)
_ADD = _Script.of(_ADD_LUA)
_EVICT = _Script.of(_EVICT_LUA)
_CLEAR = _Script.of(_CLEAR_LUA)
_SCRIPTS = (_LOOKUP, _ADD, _EVICT, _CLEAR)


@dataclass
class RedisIndexStats:
    """Counters of one :class:`RedisIndex` (plain attributes, read by the metrics exporter)."""

    num_lookups: int = 0
    num_lookup_errors: int = 0
    num_added: int = 0
    num_evicted: int = 0
    num_dropped_over_bound: int = 0
    """Entries dropped because a worker went above ``max_blocks_per_worker``."""
    num_clears: int = 0
    num_script_reloads: int = 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisIndex:
    """A :class:`~pdserve.index.base.KVIndex` in Redis (schema in the module docstring).

    Redis errors come out as :class:`~pdserve.index.errors.IndexUnavailable` (connection refused,
    reset, timed out) or :class:`~pdserve.index.errors.IndexCommandError` (an error reply).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_blocks_per_worker: int | None = DEFAULT_MAX_BLOCKS_PER_WORKER,
        owns_client: bool = False,
    ) -> None:
        if max_blocks_per_worker is not None and max_blocks_per_worker < 1:
            raise ValueError(f"max_blocks_per_worker must be >= 1, got {max_blocks_per_worker}")
        if not namespace:
            raise ValueError("namespace must not be empty")
        self._redis = client
        self._owns_client = owns_client
        self.namespace = namespace
        self.max_blocks_per_worker = max_blocks_per_worker
        self.stats = RedisIndexStats()
        self._blk_prefix = f"{namespace}:blk:"
        self._workers_key = f"{namespace}:workers"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        password: str | None = None,
        timeout_s: float = 1.0,
        namespace: str = DEFAULT_NAMESPACE,
        max_blocks_per_worker: int | None = DEFAULT_MAX_BLOCKS_PER_WORKER,
    ) -> RedisIndex:
        """An index on its own connection pool to ``url``; ``timeout_s`` bounds connecting and
        each reply, so a dead Redis turns into :class:`IndexUnavailable` instead of a hang."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        client = aioredis.Redis.from_url(
            url,
            password=password,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        return cls(
            client,
            namespace=namespace,
            max_blocks_per_worker=max_blocks_per_worker,
            owns_client=True,
        )

    async def aclose(self) -> None:
        """Closes the connection pool if this index created it."""
        if self._owns_client:
            await self._redis.aclose()

    # -- KVIndex -------------------------------------------------------------------------------

    async def lookup(
        self, keys: Sequence[BlockKey], worker_ids: Sequence[str] | None = None
    ) -> dict[str, int]:
        if not keys or (worker_ids is not None and not worker_ids):
            return {}
        self.stats.num_lookups += 1
        redis_keys = [self._blk_key(key) for key in keys]
        args = list(worker_ids or ())
        try:
            reply = await self._call_script(_LOOKUP, redis_keys, args)
        except Exception:
            self.stats.num_lookup_errors += 1
            raise
        return {_text(reply[i]): int(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def add(self, worker_id: str, keys: Sequence[BlockKey]) -> None:
        if not keys:
            return
        cap = str(self.max_blocks_per_worker or 0)
        script_keys = [self._wblk_key(worker_id), self._wseq_key(worker_id), self._workers_key]
        calls = [
            (script_keys, [worker_id, cap, self._blk_prefix, *map(_hex, chunk)])
            for chunk in _chunks(keys, _WRITE_CHUNK)
        ]
        results = await self._pipeline_scripts(_ADD, calls)
        dropped = sum(int(r) for r in results)
        self.stats.num_added += len(keys)
        self.stats.num_dropped_over_bound += dropped
        if dropped:
            logger.debug("worker %s over its bound: dropped %d oldest blocks", worker_id, dropped)

    async def evict(self, worker_id: str, keys: Sequence[BlockKey]) -> None:
        if not keys:
            return
        script_keys = [self._wblk_key(worker_id), self._workers_key]
        calls = [
            (script_keys, [worker_id, self._blk_prefix, *map(_hex, chunk)])
            for chunk in _chunks(keys, _WRITE_CHUNK)
        ]
        results = await self._pipeline_scripts(_EVICT, calls)
        self.stats.num_evicted += sum(int(r) for r in results)

    async def clear(self, worker_id: str) -> None:
        script_keys = [self._wblk_key(worker_id), self._workers_key, self._wseq_key(worker_id)]
        args = [worker_id, self._blk_prefix, str(_CLEAR_CHUNK)]
        while int(await self._call_script(_CLEAR, script_keys, args)) > 0:
            pass
        self.stats.num_clears += 1
        logger.info("cleared the index entries of worker %s", worker_id)

    async def workers(self) -> set[str]:
        async with _redis_errors():
            members = await self._redis.smembers(self._workers_key)  # type: ignore[misc]
        return {_text(m) for m in members}

    async def num_blocks(self, worker_id: str) -> int:
        async with _redis_errors():
            return int(await self._redis.zcard(self._wblk_key(worker_id)))

    async def ping(self) -> None:
        """Raises :class:`IndexUnavailable` unless Redis answers."""
        async with _redis_errors():
            await self._redis.ping()  # type: ignore[misc]

    # -- internals -----------------------------------------------------------------------------

    def _blk_key(self, key: BlockKey) -> str:
        return f"{self._blk_prefix}{key:016x}"

    def _wblk_key(self, worker_id: str) -> str:
        return f"{self.namespace}:wblk:{worker_id}"

    def _wseq_key(self, worker_id: str) -> str:
        return f"{self.namespace}:wseq:{worker_id}"

    async def _call_script(self, script: _Script, keys: list[str], args: list[str]) -> Any:
        async def by_sha() -> Any:
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)  # type: ignore[misc]

        async def by_source() -> Any:
            self.stats.num_script_reloads += 1
            return await self._redis.eval(script.source, len(keys), *keys, *args)  # type: ignore[misc]

        return await _with_reload(by_sha, by_source)

    async def _pipeline_scripts(
        self, script: _Script, calls: list[tuple[list[str], list[str]]]
    ) -> list[Any]:
        async def run() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                return list(await pipe.execute())

        async def reload_and_run() -> list[Any]:
            self.stats.num_script_reloads += 1
            for each in _SCRIPTS:
                await self._redis.script_load(each.source)  # type: ignore[misc]
            return await run()

        return await _with_reload(run, reload_and_run)


async def _with_reload(first: Callable[[], Awaitable[T]], again: Callable[[], Awaitable[T]]) -> T:
    async with _redis_errors():
        for attempt in range(_CONNECTION_ATTEMPTS):
            try:
                try:
                    return await first()
                except redis_errors.NoScriptError:
                    # Redis restarted or flushed its script cache; every script is idempotent.
                    return await again()
            except redis_errors.ConnectionError:
                # A pooled connection to a Redis that restarted fails once, then the client
                # reconnects: try again (the scripts are idempotent). Timeouts are not retried,
                # so a hung Redis costs one timeout, not several.
                if attempt + 1 == _CONNECTION_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")


@asynccontextmanager
async def _redis_errors() -> AsyncIterator[None]:
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise IndexUnavailable(f"Redis index unreachable: {exc}") from exc
    except redis_errors.RedisError as exc:
        raise IndexCommandError(f"Redis index command failed: {exc}") from exc


def _hex(key: BlockKey) -> str:
    return f"{key:016x}"


def _chunks(keys: Sequence[BlockKey], size: int) -> list[Sequence[BlockKey]]:
    return [keys[i : i + size] for i in range(0, len(keys), size)]

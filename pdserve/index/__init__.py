"""The prefix-cache index: block keys, the index interface and its Redis and in-memory
implementations, and the indexer that feeds it from an engine's KV-cache events."""

from pdserve.index.base import KVIndex
from pdserve.index.errors import IndexCommandError, IndexUnavailable, KVIndexError
from pdserve.index.events import (
    IndexerStats,
    KVEventIndexer,
    kv_events_config,
    kv_events_ipc_config,
)
from pdserve.index.keys import BlockKey, block_keys, chain_keys, num_full_blocks, root_key
from pdserve.index.memory import MemoryIndex
from pdserve.index.redis_index import RedisIndex, RedisIndexStats

__all__ = [
    "BlockKey",
    "IndexCommandError",
    "IndexUnavailable",
    "IndexerStats",
    "KVEventIndexer",
    "KVIndex",
    "KVIndexError",
    "MemoryIndex",
    "RedisIndex",
    "RedisIndexStats",
    "block_keys",
    "chain_keys",
    "kv_events_config",
    "kv_events_ipc_config",
    "num_full_blocks",
    "root_key",
]

"""Feeds one worker's engine KV-cache events into the prefix-cache index.

Event flow: the engine (vLLM, ``kv_events_config`` from :func:`kv_events_config`) publishes each
scheduler step's events as a msgpack ``KVEventBatch(ts, events, data_parallel_rank)`` in a
ZMQ multipart message ``(topic, seq, payload)``, ``seq`` an 8-byte big-endian counter from 0.
:class:`KVEventIndexer`, an asyncio task in the worker process, receives them on a SUB socket and
applies them in order:

- ``BlockStored``: keys are computed from the event's token ids (:mod:`pdserve.index.keys`),
  chained from the parent block's pdserve key, found through a map engine hash -> pdserve key
  the indexer keeps. A chain whose parent is ``None`` starts at the root key of the event's
  LoRA name and cache salt. A block whose parent is unknown (its store was missed) cannot be
  keyed and is skipped, as is anything keyed by more than its tokens (multimodal inputs,
  prompt embeddings), another KV-cache group than 0, or another block size.
- ``BlockRemoved``: engine hashes are mapped back to pdserve keys and evicted.
- ``AllBlocksCleared``: the worker's entries are cleared.

Gaps: the indexer tracks ``seq``. When a batch arrives with a higher ``seq`` than expected, it
asks the engine's replay socket (ZMQ ROUTER; request ``(b"", start_seq)``, answers
``(b"", topic, seq, payload)`` ... then ``seq == -1``) for the missing batches. If replay cannot
fill the gap (no replay endpoint, timeout, batches already out of the engine's buffer), it
resyncs: the worker's entries and the hash map are cleared, and the index refills as the engine
stores blocks again. Until then the index under-reports this worker's cache, which only costs
routing quality; it never claims blocks the worker lost. A batch with a lower ``seq`` than
expected is a duplicate, except ``seq == 0``, which means the engine restarted: resync too.
Malformed messages and events are logged, counted and skipped; the index is written only from
events that decoded and validated completely.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from pdserve.index.base import KVIndex
from pdserve.index.errors import KVIndexError
from pdserve.index.keys import BlockKey, chain_keys, root_key

__all__ = [
    "DEFAULT_TOPIC",
    "IndexerStats",
    "KVEventIndexer",
    "kv_events_config",
    "kv_events_ipc_config",
]

logger = logging.getLogger(__name__)

DEFAULT_TOPIC = "kv"
_END_SEQ = -1
_MAX_HASH_MAP = 1 << 21


# Decoding structs mirroring vllm.distributed.kv_events (tests encode with vLLM's own); they
# keep this module free of vLLM so routers and tests import it cheaply.
class _Batch(msgspec.Struct, array_like=True):
    ts: float
    events: list[msgspec.Raw]
    data_parallel_rank: int | None = None


class _Event(msgspec.Struct, tag=True):
    pass


class BlockStored(_Event):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[list[Any] | None] | None = None
    group_idx: int | None = None


class BlockRemoved(_Event):
    block_hashes: list[int | bytes]
    medium: str | None = None
    group_idx: int | None = None


class AllBlocksCleared(_Event):
    pass


_batch_decoder = msgspec.msgpack.Decoder(_Batch)
_event_decoder = msgspec.msgpack.Decoder(BlockStored | BlockRemoved | AllBlocksCleared)


def kv_events_config(
    pub_port: int, replay_port: int, host: str = "127.0.0.1", topic: str = DEFAULT_TOPIC
) -> dict[str, Any]:
    """vLLM's ``kv_events_config`` for an engine whose events this module's indexer reads.

    The indexer binds ``tcp://{host}:{pub_port}`` and the engine's PUB socket connects to it
    (vLLM connects to any endpoint without a wildcard), so the token ids the events carry are
    not offered on other interfaces. The engine binds its replay socket on
    ``tcp://{host}:{replay_port}``. Pass the returned ``endpoint`` and ``replay_endpoint`` to
    :class:`KVEventIndexer`.
    """
    for name, port in (("pub_port", pub_port), ("replay_port", replay_port)):
        if not 1 <= port <= 65535:
            raise ValueError(f"{name} must be a port in 1..65535, got {port}")
    if pub_port == replay_port:
        raise ValueError(f"pub_port and replay_port must differ, both are {pub_port}")
    return {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://{host}:{pub_port}",
        "replay_endpoint": f"tcp://{host}:{replay_port}",
        "topic": topic,
    }


def kv_events_ipc_config(directory: str, topic: str = DEFAULT_TOPIC) -> dict[str, Any]:
    """vLLM's ``kv_events_config`` over Unix sockets in ``directory`` (a private directory of
    the worker process): the engine binds both sockets and the indexer connects. Nothing is
    offered on the network, and no port can be taken by another process between choosing it
    and binding it (with TCP ports chosen ahead, two workers starting at once can collide).
    """
    if not directory:
        raise ValueError("directory must not be empty")
    return {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"ipc://{directory}/kv-events",
        "replay_endpoint": f"ipc://{directory}/kv-replay",
        "topic": topic,
    }


def _engine_binds(endpoint: str) -> bool:
    # vLLM's ZmqEventPublisher binds wildcard and ipc/inproc endpoints and connects to the rest.
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


@dataclass
class IndexerStats:
    """Counters of one :class:`KVEventIndexer` (plain attributes)."""

    num_batches: int = 0
    """Batches applied (live or replayed)."""
    num_events_applied: int = 0
    num_blocks_stored: int = 0
    num_blocks_removed: int = 0
    num_gaps: int = 0
    num_replayed_batches: int = 0
    num_resyncs: int = 0
    num_duplicates: int = 0
    num_malformed: int = 0
    """Messages, batches or events that could not be decoded or failed validation."""
    num_unkeyable_blocks: int = 0
    """Stored blocks skipped: unknown parent, multimodal/embedding keys, other group or size."""
    num_index_errors: int = 0
    last_seq: int | None = None


class _Unkeyable(Exception):
    pass


class KVEventIndexer:
    """Applies one worker's engine KV events to a :class:`~pdserve.index.base.KVIndex`.

    ``endpoint``/``replay_endpoint`` are the values of :func:`kv_events_config`. Run it as a task
    (``await indexer.run()``; cancel the task to stop). On start it clears the worker's entries,
    since they may be left from an earlier engine with the same worker id.
    """

    def __init__(
        self,
        worker_id: str,
        endpoint: str,
        replay_endpoint: str | None,
        index: KVIndex,
        block_size: int,
        *,
        topic: str = DEFAULT_TOPIC,
        replay_timeout_s: float = 1.0,
        clear_on_start: bool = True,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if replay_timeout_s <= 0:
            raise ValueError(f"replay_timeout_s must be > 0, got {replay_timeout_s}")
        self.worker_id = worker_id
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.index = index
        self.block_size = block_size
        self.topic = topic
        self.replay_timeout_s = replay_timeout_s
        self.clear_on_start = clear_on_start
        self.stats = IndexerStats()
        self._ctx = context or zmq.asyncio.Context.instance()
        self._expected_seq: int | None = None
        self._keys: OrderedDict[int | bytes, BlockKey] = OrderedDict()
        self._resync_pending = False
        self._ready = asyncio.Event()

    async def wait_ready(self) -> None:
        """Returns once the SUB socket is bound or connected (and the start-up clear is done)."""
        await self._ready.wait()

    async def run(self) -> None:
        """Receives and applies events until cancelled."""
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic.encode())
        try:
            if _engine_binds(self.endpoint):
                sub.connect(self.endpoint.replace("*", "127.0.0.1"))
            else:
                sub.bind(self.endpoint)
            if self.clear_on_start:
                await self._resync("start-up")
            self._ready.set()
            logger.info(
                "worker %s: indexing KV events from %s (replay %s)",
                self.worker_id,
                self.endpoint,
                self.replay_endpoint,
            )
            while True:
                frames = await sub.recv_multipart()
                await self.handle_message(frames)
        finally:
            sub.close(linger=0)

    async def engine_cache_reset(self) -> None:
        """Drops the worker's entries now, after its engine emptied its prefix cache.

        vLLM queues the ``AllBlocksCleared`` of a reset and publishes it with the next scheduler
        step, which may be long after an idle engine's reset; until then the index would send
        requests to blocks that are gone. The event still arrives later and is applied as usual.
        """
        self._keys.clear()
        try:
            await self.index.clear(self.worker_id)
        except KVIndexError as exc:
            self.stats.num_index_errors += 1
            self._resync_pending = True
            logger.warning(
                "worker %s: clearing after a cache reset failed: %s", self.worker_id, exc
            )

    async def handle_message(self, frames: Sequence[bytes]) -> None:
        """Applies one ``(topic, seq, payload)`` message, filling a gap before it if needed."""
        parsed = self._parse_frames(frames)
        if parsed is None:
            return
        seq, payload = parsed
        expected = self._expected_seq
        if expected is None:
            expected = 0
        if seq < expected:
            if seq == 0:
                logger.warning(
                    "worker %s: KV event seq restarted at 0 (expected %d): engine restarted",
                    self.worker_id,
                    expected,
                )
                await self._resync("publisher restart")
            else:
                self.stats.num_duplicates += 1
                logger.debug("worker %s: duplicate KV event batch %d", self.worker_id, seq)
                return
        elif seq > expected:
            self.stats.num_gaps += 1
            logger.warning(
                "worker %s: KV event gap: expected seq %d, got %d", self.worker_id, expected, seq
            )
            if not await self._fill_gap(expected, seq):
                await self._resync(f"gap {expected}..{seq - 1} not replayable")
        await self._apply_batch(seq, payload)

    # -- sequence handling ---------------------------------------------------------------------

    def _parse_frames(self, frames: Sequence[bytes]) -> tuple[int, bytes] | None:
        if len(frames) != 3 or len(frames[1]) != 8:
            self.stats.num_malformed += 1
            logger.warning(
                "worker %s: malformed KV event message (%d frames), skipped",
                self.worker_id,
                len(frames),
            )
            return None
        seq = int.from_bytes(frames[1], "big", signed=True)
        if seq < 0:
            self.stats.num_malformed += 1
            logger.warning("worker %s: KV event message with seq %d, skipped", self.worker_id, seq)
            return None
        return seq, bytes(frames[2])

    async def _fill_gap(self, start: int, stop: int) -> bool:
        """Replays batches ``start .. stop-1``; True if all of them were applied."""
        if self.replay_endpoint is None:
            return False
        replayed = await self._request_replay(start)
        wanted = {seq: payload for seq, payload in replayed if start <= seq < stop}
        if len(wanted) != stop - start:
            logger.warning(
                "worker %s: replay returned %d of the %d missing batches",
                self.worker_id,
                len(wanted),
                stop - start,
            )
            return False
        for seq in range(start, stop):
            await self._apply_batch(seq, wanted[seq])
            self.stats.num_replayed_batches += 1
        return True

    async def _request_replay(self, start: int) -> list[tuple[int, bytes]]:
        assert self.replay_endpoint is not None
        # A fresh socket per request, so late answers to an earlier, timed-out one never mix in.
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        received: list[tuple[int, bytes]] = []
        try:
            dealer.connect(self.replay_endpoint)
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.replay_timeout_s
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0 or not await dealer.poll(remaining * 1000):
                    logger.warning(
                        "worker %s: replay from %s timed out after %.1fs",
                        self.worker_id,
                        self.replay_endpoint,
                        self.replay_timeout_s,
                    )
                    return []
                frames = await dealer.recv_multipart()
                if len(frames) != 4 or len(frames[2]) != 8:
                    self.stats.num_malformed += 1
                    continue
                seq = int.from_bytes(frames[2], "big", signed=True)
                if seq == _END_SEQ:
                    return received
                received.append((seq, bytes(frames[3])))
        finally:
            dealer.close(linger=0)

    async def _resync(self, reason: str) -> None:
        self._keys.clear()
        try:
            await self.index.clear(self.worker_id)
        except KVIndexError as exc:
            self.stats.num_index_errors += 1
            self._resync_pending = True
            logger.warning("worker %s: resync (%s) failed: %s", self.worker_id, reason, exc)
            return
        self._resync_pending = False
        if reason != "start-up":
            self.stats.num_resyncs += 1
            logger.warning(
                "worker %s: index resynced (%s); entries refill as blocks are stored",
                self.worker_id,
                reason,
            )

    # -- applying events -----------------------------------------------------------------------

    async def _apply_batch(self, seq: int, payload: bytes) -> None:
        self._expected_seq = seq + 1
        self.stats.last_seq = seq
        if self._resync_pending:
            await self._resync("index was unavailable")
            if self._resync_pending:
                return
        try:
            batch = _batch_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.stats.num_malformed += 1
            logger.warning("worker %s: malformed KV event batch %d: %s", self.worker_id, seq, exc)
            return
        self.stats.num_batches += 1
        for raw in batch.events:
            try:
                event = _event_decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.stats.num_malformed += 1
                logger.warning(
                    "worker %s: malformed KV event in batch %d: %s", self.worker_id, seq, exc
                )
                continue
            try:
                await self._apply_event(event)
            except ValueError as exc:
                self.stats.num_malformed += 1
                logger.warning(
                    "worker %s: invalid KV event in batch %d: %s", self.worker_id, seq, exc
                )
                continue
            except KVIndexError as exc:
                # The index missed writes: clear and refill once it answers again.
                self.stats.num_index_errors += 1
                self._resync_pending = True
                logger.warning(
                    "worker %s: index write failed in batch %d: %s", self.worker_id, seq, exc
                )
                return
            self.stats.num_events_applied += 1

    async def _apply_event(self, event: BlockStored | BlockRemoved | AllBlocksCleared) -> None:
        if isinstance(event, BlockStored):
            await self._apply_stored(event)
        elif isinstance(event, BlockRemoved):
            await self._apply_removed(event)
        else:
            self._keys.clear()
            await self.index.clear(self.worker_id)

    async def _apply_stored(self, event: BlockStored) -> None:
        try:
            keys = self._keys_of(event)
        except _Unkeyable as exc:
            self.stats.num_unkeyable_blocks += len(event.block_hashes)
            logger.debug("worker %s: stored blocks not indexed: %s", self.worker_id, exc)
            return
        for engine_hash, key in zip(event.block_hashes, keys, strict=True):
            self._keys[engine_hash] = key
            self._keys.move_to_end(engine_hash)
        while len(self._keys) > _MAX_HASH_MAP:
            self._keys.popitem(last=False)
        await self.index.add(self.worker_id, keys)
        self.stats.num_blocks_stored += len(keys)

    def _keys_of(self, event: BlockStored) -> list[BlockKey]:
        """pdserve keys of a stored event's blocks; ``ValueError`` if it is inconsistent,
        ``_Unkeyable`` if it is valid but cannot be keyed by its tokens."""
        num_blocks = len(event.block_hashes)
        if event.block_size != self.block_size:
            raise _Unkeyable(f"block size {event.block_size}, indexing {self.block_size}")
        if len(event.token_ids) != num_blocks * event.block_size:
            raise ValueError(
                f"{len(event.token_ids)} token ids for {num_blocks} blocks of {event.block_size}"
            )
        if event.group_idx not in (None, 0):
            raise _Unkeyable(f"KV-cache group {event.group_idx}")
        extra = event.extra_keys
        if extra is not None and len(extra) != num_blocks:
            raise ValueError(f"{len(extra)} extra-key entries for {num_blocks} blocks")
        salt: str | None = None
        for position, entry in enumerate(extra or ()):
            rest = list(entry or ())
            if event.lora_name is not None and rest and rest[0] == event.lora_name:
                rest.pop(0)
            if position == 0 and event.parent_block_hash is None and rest:
                if len(rest) == 1 and isinstance(rest[0], str):
                    salt = rest[0]
                    continue
            if rest:
                raise _Unkeyable(f"extra keys beyond LoRA name and cache salt: {rest!r}")
        if event.parent_block_hash is None:
            parent = root_key(event.lora_name, salt)
        else:
            known = self._keys.get(event.parent_block_hash)
            if known is None:
                raise _Unkeyable(f"unknown parent block {event.parent_block_hash!r}")
            parent = known
        return chain_keys(parent, event.token_ids, self.block_size)

    async def _apply_removed(self, event: BlockRemoved) -> None:
        if event.group_idx not in (None, 0):
            return
        keys = [key for h in event.block_hashes if (key := self._keys.pop(h, None)) is not None]
        if keys:
            await self.index.evict(self.worker_id, keys)
            self.stats.num_blocks_removed += len(keys)

"""The KV-event indexer, fed vLLM's own msgpack structs over real ZMQ sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
from index_redis_server import free_port
from vllm.distributed.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    ZmqEventPublisher,
)

from pdserve.index import (
    IndexUnavailable,
    KVEventIndexer,
    KVIndex,
    MemoryIndex,
    RedisIndex,
    block_keys,
    kv_events_config,
    kv_events_ipc_config,
)

BLOCK = 4
TOPIC = "kv"
_encoder = msgspec.msgpack.Encoder()


def stored(
    hashes: Sequence[int | bytes],
    tokens: Sequence[int],
    parent: int | bytes | None = None,
    *,
    lora_name: str | None = None,
    extra_keys: list[tuple[Any, ...] | None] | None = None,
    block_size: int = BLOCK,
    group_idx: int | None = None,
) -> BlockStored:
    return BlockStored(
        block_hashes=list(hashes),
        parent_block_hash=parent,
        token_ids=list(tokens),
        block_size=block_size,
        lora_id=1 if lora_name else None,
        medium="GPU",
        lora_name=lora_name,
        extra_keys=extra_keys,
        group_idx=group_idx,
    )


def payload(*events: Any) -> bytes:
    return _encoder.encode(KVEventBatch(ts=1.0, events=list(events)))


def message(seq: int, *events: Any) -> list[bytes]:
    return [TOPIC.encode(), seq.to_bytes(8, "big"), payload(*events)]


PROMPT = list(range(1000, 1016))  # 4 blocks of 4
KEYS = block_keys(PROMPT, BLOCK)


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)


def make_indexer(index: KVIndex, replay_endpoint: str | None = None) -> KVEventIndexer:
    return KVEventIndexer(
        "w1",
        f"tcp://127.0.0.1:{free_port()}",
        replay_endpoint,
        index,
        BLOCK,
        topic=TOPIC,
        replay_timeout_s=2.0,
    )


# -- events applied directly (no sockets) ------------------------------------------------------


async def test_stored_blocks_get_the_keys_the_router_computes() -> None:
    index = MemoryIndex()
    indexer = make_indexer(index)
    await indexer.handle_message(message(0, stored([11, 12], PROMPT[:8])))
    await indexer.handle_message(message(1, stored([b"\x0d", 14], PROMPT[8:], parent=12)))
    assert await index.lookup(KEYS) == {"w1": 4}
    await indexer.handle_message(message(2, BlockRemoved(block_hashes=[b"\x0d"], medium="GPU")))
    assert await index.lookup(KEYS) == {"w1": 2}
    await indexer.handle_message(message(3, AllBlocksCleared()))
    assert await index.lookup(KEYS) == {}
    assert indexer.stats.num_events_applied == 4
    assert indexer.stats.last_seq == 3


async def test_lora_name_and_cache_salt_are_folded_into_the_keys() -> None:
    index = MemoryIndex()
    indexer = make_indexer(index)
    extra: list[tuple[Any, ...] | None] = [("ad", "tenant"), ("ad",)]
    await indexer.handle_message(
        message(0, stored([1, 2], PROMPT[:8], lora_name="ad", extra_keys=extra))
    )
    salted = block_keys(PROMPT[:8], BLOCK, lora_name="ad", cache_salt="tenant")
    assert await index.lookup(salted) == {"w1": 2}
    assert await index.lookup(KEYS[:2]) == {}
    assert await index.lookup(block_keys(PROMPT[:8], BLOCK, lora_name="ad")) == {}


async def test_unkeyable_blocks_are_skipped() -> None:
    index = MemoryIndex()
    indexer = make_indexer(index)
    mm: list[tuple[Any, ...] | None] = [(("img-hash", 0),)]
    await indexer.handle_message(message(0, stored([1], PROMPT[:4], extra_keys=mm)))
    await indexer.handle_message(message(1, stored([2], PROMPT[4:8], parent=999)))  # unknown
    await indexer.handle_message(message(2, stored([3], PROMPT[:4], group_idx=1)))
    await indexer.handle_message(message(3, stored([4], PROMPT[:8], block_size=8)))
    assert await index.workers() == set()
    assert indexer.stats.num_unkeyable_blocks == 4
    assert indexer.stats.num_malformed == 0


async def test_malformed_events_never_reach_the_index() -> None:
    index = MemoryIndex()
    indexer = make_indexer(index)
    bad_count = stored([1, 2], PROMPT[:7])  # 7 token ids for 2 blocks of 4
    good = stored([5], PROMPT[:4])
    await indexer.handle_message(message(0, bad_count, good))
    await indexer.handle_message([TOPIC.encode(), (1).to_bytes(8, "big"), b"\xc1not msgpack"])
    await indexer.handle_message([TOPIC.encode(), b"short"])
    # An event of an unknown type inside an otherwise valid batch.
    weird = _encoder.encode((1.0, [{"type": "Bogus", "x": 1}, {"type": "AllBlocksCleared"}]))
    await indexer.handle_message([TOPIC.encode(), (2).to_bytes(8, "big"), weird])
    assert indexer.stats.num_malformed == 4
    assert indexer.stats.num_gaps == 0
    # The valid event of batch 0 was applied; the AllBlocksCleared of batch 2 then cleared it.
    assert indexer.stats.num_events_applied == 2
    assert await index.workers() == set()


async def test_removal_of_unknown_hashes_and_duplicates_change_nothing() -> None:
    index = MemoryIndex()
    indexer = make_indexer(index)
    await indexer.handle_message(message(0, stored([1, 2], PROMPT[:8])))
    await indexer.handle_message(message(1, BlockRemoved(block_hashes=[77], medium="GPU")))
    await indexer.handle_message(message(1, BlockRemoved(block_hashes=[1], medium="GPU")))
    assert indexer.stats.num_duplicates == 1
    assert await index.lookup(KEYS) == {"w1": 2}


async def test_seq_restarting_at_zero_resyncs() -> None:
    index = MemoryIndex()
    indexer = make_indexer(index)
    await indexer.handle_message(message(0, stored([1, 2], PROMPT[:8])))
    await indexer.handle_message(message(1, stored([3], PROMPT[8:12], parent=2)))
    await indexer.handle_message(message(0, stored([9], PROMPT[:4])))
    assert indexer.stats.num_resyncs == 1
    assert await index.lookup(KEYS) == {"w1": 1}


# -- over real sockets ---------------------------------------------------------------------------


class FakeEngine:
    """The engine side of vLLM's protocol: an XPUB (a PUB that also shows subscriptions, so the
    test knows when the indexer listens) and a replay ROUTER answering from ``self.buffer``."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, replay_endpoint: str) -> None:
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.connect(endpoint)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(replay_endpoint)
        self.buffer: dict[int, bytes] = {}
        self.replay_requests: list[int] = []
        self._task = asyncio.create_task(self._serve_replay())

    async def wait_subscribed(self) -> None:
        frame = await asyncio.wait_for(self.pub.recv(), timeout=10)
        assert frame == b"\x01" + TOPIC.encode()

    async def publish(self, seq: int, *events: Any, live: bool = True) -> None:
        data = payload(*events)
        self.buffer[seq] = data
        if live:
            await self.pub.send_multipart([TOPIC.encode(), seq.to_bytes(8, "big"), data])

    async def _serve_replay(self) -> None:
        while True:
            client, _, start = await self.router.recv_multipart()
            first = int.from_bytes(start, "big")
            self.replay_requests.append(first)
            for seq in sorted(self.buffer):
                if seq >= first:
                    await self.router.send_multipart(
                        [client, b"", TOPIC.encode(), seq.to_bytes(8, "big"), self.buffer[seq]]
                    )
            end = (-1).to_bytes(8, "big", signed=True)
            await self.router.send_multipart([client, b"", b"", end, b""])

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.pub.close(linger=0)
        self.router.close(linger=0)


@pytest.fixture
async def wired(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[tuple[KVEventIndexer, FakeEngine, KVIndex]]:
    """An indexer (into a Redis index) running as a task, and a fake engine wired to it."""
    config = kv_events_config(free_port(), free_port(), topic=TOPIC)
    index = RedisIndex.from_url(redis_url, namespace=f"ev:{request.node.name[:40]}")
    indexer = KVEventIndexer(
        "w1",
        config["endpoint"],
        config["replay_endpoint"],
        index,
        BLOCK,
        topic=TOPIC,
        replay_timeout_s=2.0,
    )
    task = asyncio.create_task(indexer.run())
    await asyncio.wait_for(indexer.wait_ready(), timeout=10)
    engine = FakeEngine(
        zmq.asyncio.Context.instance(), config["endpoint"], config["replay_endpoint"]
    )
    await engine.wait_subscribed()
    yield indexer, engine, index
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await engine.close()
    await index.clear("w1")
    await index.aclose()


async def test_gap_is_filled_from_the_replay_socket(
    wired: tuple[KVEventIndexer, FakeEngine, KVIndex],
) -> None:
    indexer, engine, index = wired
    await engine.publish(0, stored([1, 2], PROMPT[:8]))
    await engine.publish(1, stored([3], PROMPT[8:12], parent=2), live=False)  # lost
    await engine.publish(2, stored([4], PROMPT[12:16], parent=3))
    await wait_for(lambda: indexer.stats.last_seq == 2, "batch 2")
    assert engine.replay_requests == [1]
    assert indexer.stats.num_gaps == 1
    assert indexer.stats.num_replayed_batches == 1
    assert indexer.stats.num_resyncs == 0
    assert await index.lookup(KEYS) == {"w1": 4}


async def test_gap_beyond_the_replay_buffer_resyncs(
    wired: tuple[KVEventIndexer, FakeEngine, KVIndex],
) -> None:
    indexer, engine, index = wired
    await engine.publish(0, stored([1, 2], PROMPT[:8]))
    await wait_for(lambda: indexer.stats.last_seq == 0, "batch 0")
    assert await index.lookup(KEYS) == {"w1": 2}
    await engine.publish(1, BlockRemoved(block_hashes=[2], medium="GPU"), live=False)
    del engine.buffer[1]  # fell out of the engine's replay buffer
    await engine.publish(2, stored([3], PROMPT[8:12], parent=2))
    await engine.publish(3, stored([5], PROMPT[:4]))
    await wait_for(lambda: indexer.stats.last_seq == 3, "batch 3")
    assert indexer.stats.num_resyncs == 1
    # The entries the lost batch might have changed are gone; block 3's parent is unknown.
    assert await index.lookup(KEYS) == {"w1": 1}
    assert indexer.stats.num_unkeyable_blocks == 1


async def test_malformed_message_over_the_wire_is_skipped(
    wired: tuple[KVEventIndexer, FakeEngine, KVIndex],
) -> None:
    indexer, engine, index = wired
    await engine.pub.send_multipart([TOPIC.encode(), b"\x00\x01"])  # no payload, bad seq
    await engine.pub.send_multipart([TOPIC.encode(), (0).to_bytes(8, "big"), b"\xc1\xc1"])
    await engine.publish(1, stored([1, 2], PROMPT[:8]))
    await wait_for(lambda: indexer.stats.last_seq == 1, "batch 1")
    assert indexer.stats.num_malformed == 2
    assert indexer.stats.num_gaps == 0
    assert await index.lookup(KEYS) == {"w1": 2}


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_vllm_publisher_end_to_end_with_replay(
    redis_url: str, transport: str, tmp_path: Path
) -> None:
    """vLLM's own ZmqEventPublisher, over TCP (the indexer binds) and over Unix sockets (the
    engine binds, as workers run it): batches published before the indexer listened are
    recovered through vLLM's replay socket."""
    if transport == "tcp":
        config = kv_events_config(free_port(), free_port(), topic=TOPIC)
    else:
        config = kv_events_ipc_config(str(tmp_path), topic=TOPIC)
    publisher = ZmqEventPublisher(
        0, endpoint=config["endpoint"], replay_endpoint=config["replay_endpoint"], topic=TOPIC
    )
    index = RedisIndex.from_url(redis_url, namespace=f"ev:vllm:{transport}")
    indexer = KVEventIndexer(
        "w1",
        config["endpoint"],
        config["replay_endpoint"],
        index,
        BLOCK,
        topic=TOPIC,
        replay_timeout_s=5.0,
    )
    task: asyncio.Task[None] | None = None
    try:
        publisher.publish(KVEventBatch(ts=1.0, events=[stored([1, 2], PROMPT[:8])]))
        await wait_for(lambda: len(publisher._buffer) == 1, "vLLM to send batch 0")
        task = asyncio.create_task(indexer.run())
        await asyncio.wait_for(indexer.wait_ready(), timeout=10)
        # Until the subscription reaches vLLM's PUB, batches are dropped; keep publishing.
        published = 1
        while indexer.stats.last_seq is None:
            assert published < 400, "the indexer never received a batch"
            publisher.publish(KVEventBatch(ts=1.0, events=[stored([100 + published], PROMPT[:4])]))
            published += 1
            await asyncio.sleep(0.02)
        publisher.publish(KVEventBatch(ts=2.0, events=[stored([3, 4], PROMPT[8:], parent=2)]))
        published += 1
        await wait_for(lambda: indexer.stats.last_seq == published - 1, "the last batch")
        assert indexer.stats.num_gaps == 1  # batch 0 was sent before anyone listened
        assert indexer.stats.num_replayed_batches >= 1
        assert indexer.stats.num_resyncs == 0
        assert indexer.stats.num_batches == published
        assert await index.lookup(KEYS) == {"w1": 4}
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        publisher.shutdown()
        await index.clear("w1")
        await index.aclose()


def test_kv_events_config_matches_vllm() -> None:
    from vllm.config.kv_events import KVEventsConfig

    config = KVEventsConfig(**kv_events_config(5557, 5558))
    assert config.enable_kv_cache_events and config.publisher == "zmq"
    assert config.endpoint == "tcp://127.0.0.1:5557"
    assert config.replay_endpoint == "tcp://127.0.0.1:5558"
    with pytest.raises(ValueError):
        kv_events_config(5557, 5557)


async def test_index_outage_resyncs_once_the_index_answers_again() -> None:
    class FlakyIndex(MemoryIndex):
        """A memory index whose adds fail while ``down`` is set (an outage of the store)."""

        down = False

        async def add(self, worker_id: str, keys: Sequence[Any]) -> None:
            if self.down:
                raise IndexUnavailable("store down")
            await super().add(worker_id, keys)

    index = FlakyIndex()
    indexer = make_indexer(index)
    await indexer.handle_message(message(0, stored([1], PROMPT[:4])))
    index.down = True
    await indexer.handle_message(message(1, stored([2], PROMPT[4:8], parent=1)))
    assert indexer.stats.num_index_errors == 1
    index.down = False
    await indexer.handle_message(message(2, stored([3], PROMPT[:4])))
    assert indexer.stats.num_resyncs == 1
    # Entries from before the outage are gone; the index refills from new stores.
    assert await index.lookup(KEYS) == {"w1": 1}
    assert await index.num_blocks("w1") == 1

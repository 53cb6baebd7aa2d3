"""The router's selectors over a live-looking worker view: no engines, no Redis server (the
index is the in-process reference implementation, or one that fails like an unreachable
Redis)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis

from pdserve.config import RoutingConfig
from pdserve.errors import NoWorkerAvailable
from pdserve.index import BlockKey, IndexUnavailable, MemoryIndex, block_keys
from pdserve.registry import Registry, WorkerInfo
from pdserve.sampling import Sampling
from router import selection
from router.dispatch import RequestState
from router.selection import CacheAwareSelector, RoundRobinSelector
from router.workers import WorkerView

BLOCK = 128
MODEL = "m"


def _worker(worker_id: str, role: str, compat: str = "c1", num_running: int = 0) -> WorkerInfo:
    return WorkerInfo(
        worker_id=worker_id,
        role=role,
        endpoint=f"127.0.0.1:{1000 + len(worker_id)}",
        model=MODEL,
        compat_hash=compat,
        block_size=BLOCK,
        num_running=num_running,
    )


def _view(*workers: WorkerInfo) -> WorkerView:
    # The registry's client is never used: the test sets the view's workers itself.
    view = WorkerView(Registry(aioredis.Redis()))
    view.workers = {w.worker_id: w for w in workers}
    return view


def _state(prompt: list[int], max_tokens: int = 8) -> RequestState:
    return RequestState(
        request_id=f"r{random.getrandbits(16)}",
        prompt_ids=prompt,
        sampling=Sampling(max_tokens=max_tokens, temperature=0),
        model=MODEL,
        deadline=time.monotonic() + 60,
    )


def _prompt(seed: int, length: int = 3 * BLOCK + 10) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(50_000) for _ in range(length)]


FLEET = (
    _worker("decode-0", "decode"),
    _worker("prefill-0", "prefill"),
    _worker("prefill-1", "prefill"),
)


async def test_cache_aware_prefers_the_prefill_worker_holding_the_prefix() -> None:
    index = MemoryIndex()
    prompt = _prompt(1)
    await index.add("prefill-1", block_keys(prompt, BLOCK))
    selector = CacheAwareSelector(_view(*FLEET), index, RoutingConfig())

    route = await selector.select(_state(prompt))

    assert route.prefill is not None and route.prefill.worker_id == "prefill-1"
    assert [w.worker_id for w in route.alternates] == ["prefill-0"]
    assert route.cached_blocks == {"prefill-1": 3}
    assert selector.stats.num_cached_prompt_tokens == 3 * BLOCK
    assert selector.stats.decisions["disaggregated"] == 1


async def test_cache_aware_with_no_cache_breaks_ties_by_worker_id() -> None:
    selector = CacheAwareSelector(_view(*FLEET), MemoryIndex(), RoutingConfig())
    route = await selector.select(_state(_prompt(2)))
    assert route.prefill is not None and route.prefill.worker_id == "prefill-0"


async def test_in_flight_requests_spread_a_burst_before_heartbeats_show_it() -> None:
    view = _view(*FLEET)
    selector = CacheAwareSelector(view, MemoryIndex(), RoutingConfig())
    first = await selector.select(_state(_prompt(3)))
    assert first.prefill is not None
    with view.track(first.prefill.worker_id, prefill_tokens=400):
        second = await selector.select(_state(_prompt(4)))
    assert second.prefill is not None
    assert second.prefill.worker_id != first.prefill.worker_id
    assert view.inflight_requests == {} and view.inflight_prefill_tokens == {}


async def test_decode_worker_holding_the_prompt_serves_it_decode_only() -> None:
    index = MemoryIndex()
    prompt = _prompt(5)
    await index.add("decode-0", block_keys(prompt, BLOCK))
    config = RoutingConfig(disagg_min_uncached_tokens=64)
    selector = CacheAwareSelector(_view(*FLEET), index, config)

    route = await selector.select(_state(prompt))

    assert route.prefill is None
    assert route.reason == "short_uncached"
    assert route.decode.worker_id == "decode-0"


async def test_prefill_and_decode_share_a_kv_layout() -> None:
    workers = (
        _worker("decode-0", "decode", compat="a"),
        _worker("prefill-0", "prefill", compat="b"),
        _worker("prefill-1", "prefill", compat="a"),
    )
    index = MemoryIndex()
    prompt = _prompt(6)
    await index.add("prefill-0", block_keys(prompt, BLOCK))  # cached, but incompatible
    route = await CacheAwareSelector(_view(*workers), index, RoutingConfig()).select(_state(prompt))
    assert route.prefill is not None and route.prefill.worker_id == "prefill-1"


async def test_no_decode_worker_is_unavailable() -> None:
    selector = CacheAwareSelector(
        _view(_worker("prefill-0", "prefill")), MemoryIndex(), RoutingConfig()
    )
    with pytest.raises(NoWorkerAvailable, match="no decode worker"):
        await selector.select(_state(_prompt(7)))


class _DownIndex(MemoryIndex):
    """Fails lookups like a Redis index whose server is unreachable, until told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.num_calls = 0

    async def lookup(
        self, keys: Sequence[BlockKey], worker_ids: Sequence[str] | None = None
    ) -> dict[str, int]:
        self.num_calls += 1
        if self.down:
            raise IndexUnavailable("connection refused")
        return await super().lookup(keys, worker_ids)


async def test_index_outage_routes_on_load_logs_once_and_recovers(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selection, "INDEX_RETRY_S", 0.0)
    index = _DownIndex()
    prompt = _prompt(8)
    await index.add("prefill-1", block_keys(prompt, BLOCK))
    busy = _worker("prefill-0", "prefill", num_running=3)
    selector = CacheAwareSelector(_view(FLEET[0], busy, FLEET[2]), index, RoutingConfig())
    with caplog.at_level(logging.INFO, logger="router.selection"):
        for _ in range(3):
            route = await selector.select(_state(prompt))
            assert route.prefill is not None and route.prefill.worker_id == "prefill-1"
            assert route.cached_blocks == {}
        unavailable = [r for r in caplog.records if "index unavailable" in r.getMessage()]
        assert len(unavailable) == 1
        assert selector.stats.num_lookup_failures == 3

        index.down = False
        route = await selector.select(_state(prompt))
        assert route.cached_blocks == {"prefill-1": 3}
        assert any("available again" in r.getMessage() for r in caplog.records)


async def test_index_outage_pauses_lookups() -> None:
    index = _DownIndex()
    selector = CacheAwareSelector(_view(*FLEET), index, RoutingConfig())
    for seed in range(5):
        await selector.select(_state(_prompt(seed)))
    assert index.num_calls == 1  # the rest fell inside INDEX_RETRY_S


async def test_resume_picks_the_decode_worker_holding_prompt_and_output() -> None:
    workers = (*FLEET, _worker("decode-1", "decode"))
    index = MemoryIndex()
    state = _state(_prompt(9, length=2 * BLOCK))
    state.emitted = _prompt(10, length=BLOCK)
    await index.add("decode-1", block_keys(state.prompt_ids + state.emitted, BLOCK))
    selector = CacheAwareSelector(_view(*workers), index, RoutingConfig())
    assert (await selector.select_decode(state)).worker_id == "decode-1"


async def test_round_robin_takes_turns_ignoring_the_cache() -> None:
    selector = RoundRobinSelector(_view(*FLEET))
    chosen = []
    for seed in range(4):
        route = await selector.select(_state(_prompt(seed)))
        assert route.prefill is not None
        chosen.append(route.prefill.worker_id)
    assert chosen == ["prefill-0", "prefill-1", "prefill-0", "prefill-1"]


async def test_single_token_requests_skip_prefill() -> None:
    for selector in (
        RoundRobinSelector(_view(*FLEET)),
        CacheAwareSelector(_view(*FLEET), MemoryIndex(), RoutingConfig()),
    ):
        route = await selector.select(_state(_prompt(11), max_tokens=1))
        assert route.prefill is None

"""The router's worker view over a real redis-server: registrations, a Redis that restarts
empty, expired workers, and the router's own in-flight counts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from pdserve.launcher import start_redis
from pdserve.registry import Registry, WorkerInfo
from router.workers import WorkerView


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(Path(tmp_path_factory.mktemp("workers")) / "redis.log")
    yield url
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
async def registry(redis_url: str) -> AsyncIterator[Registry]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    await client.flushall()
    yield Registry(client, ttl_s=2.0)
    await client.aclose()


def _info(worker_id: str, state: str = "ready") -> WorkerInfo:
    return WorkerInfo(worker_id, "decode", f"127.0.0.1:{len(worker_id) + 7000}", "m", state=state)


async def test_a_registry_emptied_by_a_redis_restart_keeps_recent_workers(
    registry: Registry,
) -> None:
    view = WorkerView(registry)
    await registry.register(_info("d0"))
    await view.refresh()
    assert [w.worker_id for w in view.ready("decode", "m")] == ["d0"]

    await registry.client.flushall()  # what a restarted Redis without persistence holds
    await view.refresh()
    assert [w.worker_id for w in view.ready("decode", "m")] == ["d0"]

    # Once its last heartbeat is older than the TTL, it is gone.
    view.workers["d0"].updated_at = time.time() - registry.ttl_s - 0.1
    await view.refresh()
    assert view.ready("decode", "m") == []
    await view.stop()


async def test_deregistered_and_draining_workers_leave_at_once(registry: Registry) -> None:
    view = WorkerView(registry)
    await registry.register(_info("d0", state="draining"))
    await registry.register(_info("d1"))
    await view.refresh()
    assert [w.worker_id for w in view.ready("decode", "m")] == ["d1"]
    await registry.deregister("d0")
    await view.refresh()
    assert set(view.workers) == {"d1"}
    await view.stop()


async def test_track_counts_calls_in_flight(registry: Registry) -> None:
    view = WorkerView(registry)
    with view.track("d0", prefill_tokens=100):
        with view.track("d0"):
            assert view.inflight_requests == {"d0": 2}
            assert view.inflight_prefill_tokens == {"d0": 100}
        assert view.inflight_requests == {"d0": 1}
    assert view.inflight_requests == {} and view.inflight_prefill_tokens == {}

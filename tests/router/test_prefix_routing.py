"""Cache-aware routing end to end: real redis-server, two real prefill workers and a decode
worker (vLLM CPU, NIXL), the engines' own KV events feeding the Redis index.

The tests run in order on one cluster (each starts from what the previous one left):

1. A prefix cached on ``prefill-1`` (not the tie-break winner ``prefill-0``) attracts every
   request that shares it, and those requests reuse its blocks.
2. A second router replica started now routes the same way at once (shared index).
3. After ``prefill-1`` resets its prefix cache (AllBlocksCleared), the index follows and the
   prefix is routed (and cached) elsewhere.
4. After the worker holding the prefix is killed, its registration expires, its entries leave
   the index, and routing moves on.
5. Redis dies: the router keeps serving on load alone and logs that once; when Redis comes back
   (empty) on the same port, workers re-register, the index refills from new KV events, and
   cache-aware routing resumes.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from polling import wait_until

from kv_transfer import allocate_port
from pdserve.client import Client
from pdserve.config import PdserveConfig
from pdserve.index import KVIndexError, RedisIndex, block_keys
from pdserve.launcher import ClusterSpec, LocalCluster, start_redis
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc

pytestmark = pytest.mark.engine

BLOCK = 128
PREFIX_BLOCKS = 3


def _tokens(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 40_000) for _ in range(length)]


PREFIX = _tokens(PREFIX_BLOCKS * BLOCK, 7)


def _prompt(seed: int, prefix: list[int] = PREFIX) -> list[int]:
    return prefix + _tokens(40, seed)


@pytest.fixture(scope="module")
def prefix_cluster(
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
    make_engine_config: Callable[[Path], PdserveConfig],
) -> Iterator[LocalCluster]:
    config = make_engine_config(tiny_model)
    config.router.routing.index_sweep_s = 0.5
    spec = ClusterSpec(
        config=config,
        num_prefill=2,
        num_decode=1,
        router_port=allocate_port("127.0.0.1"),
        router_http_port=0,
        cpu_bind=False,
        log_dir=tmp_path_factory.mktemp("prefix-cluster-logs"),
    )
    with LocalCluster(spec) as running:
        yield running


@pytest.fixture(scope="module")
async def index(prefix_cluster: LocalCluster) -> AsyncIterator[RedisIndex]:
    client = aioredis.from_url(prefix_cluster.redis_url, decode_responses=True)
    yield RedisIndex(client)
    await client.aclose()


async def _held(index: RedisIndex, worker_id: str, prefix: list[int] = PREFIX) -> int:
    try:
        counts = await index.lookup(block_keys(prefix, BLOCK))
    except KVIndexError:  # Redis restarting; the client reconnects on a later call
        return -1
    return counts.get(worker_id, 0)


async def _wait_held(
    index: RedisIndex,
    worker_id: str,
    blocks: int,
    timeout_s: float = 30,
    prefix: list[int] = PREFIX,
) -> None:
    async def holds() -> bool:
        return await _held(index, worker_id, prefix) == blocks

    await wait_until(holds, timeout_s, f"{worker_id} to hold {blocks} prefix blocks in the index")


def _route(address: str, seed: int, prefix: list[int] = PREFIX) -> generation_pb2.GenerateResponse:
    with Client(address) as client:
        _, ids, last = client.complete(
            token_ids=_prompt(seed, prefix),
            max_tokens=4,
            temperature=0,
            ignore_eos=True,
            timeout=120,
        )
    assert len(ids) == 4
    return last


async def test_shared_prefix_goes_to_the_worker_that_cached_it(
    prefix_cluster: LocalCluster, index: RedisIndex
) -> None:
    # Cache the prefix on prefill-1 directly (the router would break the tie for prefill-0),
    # then let the decode worker release the held blocks: they stay in prefill-1's prefix cache.
    with grpc.insecure_channel(prefix_cluster.worker_endpoints["prefill-1"]) as channel:
        answer = worker_pb2_grpc.PrefillWorkerStub(channel).Prefill(
            worker_pb2.PrefillRequest(
                request_id="warm-prefill-1",
                prompt_token_ids=_prompt(1000),
                sampling=generation_pb2.SamplingParams(max_tokens=1, temperature=0),
            ),
            timeout=120,
        )
    with grpc.insecure_channel(prefix_cluster.worker_endpoints["decode-0"]) as channel:
        worker_pb2_grpc.DecodeWorkerStub(channel).Release(
            worker_pb2.ReleaseRequest(
                request_id="warm-release", kv_transfer_params=answer.kv_transfer_params
            ),
            timeout=30,
        )
    await _wait_held(index, "prefill-1", PREFIX_BLOCKS)
    assert await _held(index, "prefill-0") == 0

    for seed in range(3):
        last = await asyncio.to_thread(_route, prefix_cluster.router_address, seed)
        assert last.timing.disaggregated
        assert last.timing.prefill_worker == "prefill-1"
        assert last.usage.cached_prompt_tokens >= PREFIX_BLOCKS * BLOCK


async def test_a_new_router_replica_routes_the_same_way_at_once(
    prefix_cluster: LocalCluster,
) -> None:
    port = allocate_port("127.0.0.1")
    log_path = prefix_cluster.log_dir / "router-2.log"
    proc = _start_router(prefix_cluster.config_path, port, log_path)
    try:
        address = f"127.0.0.1:{port}"
        await wait_until(lambda: _serving(address, proc), 120, "the second router to serve")
        last = await asyncio.to_thread(_route, address, 10)
        assert last.timing.prefill_worker == "prefill-1"
        assert last.usage.cached_prompt_tokens >= PREFIX_BLOCKS * BLOCK
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            stacks = await asyncio.to_thread(_stacks, proc.pid)
            proc.kill()
            pytest.fail(f"the second router did not exit on SIGTERM within 30 s:\n{stacks}")


def _stacks(pid: int) -> str:
    """The Python stacks of a live process (py-spy ships with Ray's dashboard extras)."""
    spy = Path(sys.executable).with_name("py-spy")
    dump = subprocess.run(
        [str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, check=False
    )
    return dump.stdout + dump.stderr


def _start_router(config_path: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pdserve.cli",
                "router",
                "--config",
                str(config_path),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _serving(address: str, proc: subprocess.Popen[bytes]) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if proc.poll() is not None:
        raise RuntimeError(f"the second router exited with code {proc.returncode}")
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


async def test_index_follows_a_prefix_cache_reset(
    prefix_cluster: LocalCluster, index: RedisIndex
) -> None:
    with grpc.insecure_channel(prefix_cluster.worker_endpoints["prefill-1"]) as channel:
        stub = worker_pb2_grpc.PrefillWorkerStub(channel)
        # The router's last request may still be finishing on the worker: retry while busy.
        deadline = time.monotonic() + 30
        while True:
            try:
                stub.ResetPrefixCache(worker_pb2.ResetPrefixCacheRequest(), timeout=30)
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                assert time.monotonic() < deadline, exc.details()
                await asyncio.sleep(0.2)
    await _wait_held(index, "prefill-1", 0)

    last = await asyncio.to_thread(_route, prefix_cluster.router_address, 20)
    assert last.timing.prefill_worker == "prefill-0"
    await _wait_held(index, "prefill-0", PREFIX_BLOCKS)
    last = await asyncio.to_thread(_route, prefix_cluster.router_address, 21)
    assert last.timing.prefill_worker == "prefill-0"
    assert last.usage.cached_prompt_tokens >= PREFIX_BLOCKS * BLOCK


async def test_a_dead_workers_entries_leave_the_index(
    prefix_cluster: LocalCluster, index: RedisIndex
) -> None:
    prefix_cluster.kill("prefill-0", signal.SIGKILL)

    async def gone() -> bool:
        return "prefill-0" not in await index.workers()

    # Registration TTL (5 s) plus one sweep.
    await wait_until(gone, 30, "prefill-0's index entries to be swept")
    last = await asyncio.to_thread(_route, prefix_cluster.router_address, 30)
    assert last.timing.prefill_worker == "prefill-1"


async def test_router_serves_through_a_redis_outage(
    prefix_cluster: LocalCluster, index: RedisIndex
) -> None:
    port = int(prefix_cluster.redis_url.rsplit(":", 1)[1].split("/")[0])
    _kill_redis(prefix_cluster)
    for seed in range(40, 43):
        last = await asyncio.to_thread(_route, prefix_cluster.router_address, seed)
        assert last.timing.prefill_worker == "prefill-1"  # the only prefill worker left
    log = (prefix_cluster.log_dir / "router.log").read_text()
    assert log.count("prefix-cache index unavailable") == 1

    _restart_redis(prefix_cluster, port)

    def reregistered() -> bool:
        client = redis.Redis.from_url(prefix_cluster.redis_url, decode_responses=True)
        try:
            states = [
                client.hget(f"pdserve:worker:{w}", "state") for w in ("prefill-1", "decode-0")
            ]
            return states == ["ready", "ready"]
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    await wait_until(reregistered, 30, "the live workers to register again in the new Redis")
    # The new Redis is empty, and blocks an engine already holds are not stored again, so the
    # index refills with what the engines store from now on: a new prefix.
    other = _tokens(PREFIX_BLOCKS * BLOCK, 8)
    await asyncio.to_thread(_route, prefix_cluster.router_address, 50, other)
    await _wait_held(index, "prefill-1", PREFIX_BLOCKS, prefix=other)
    last = await asyncio.to_thread(_route, prefix_cluster.router_address, 51, other)
    assert last.usage.cached_prompt_tokens >= PREFIX_BLOCKS * BLOCK
    log = (prefix_cluster.log_dir / "router.log").read_text()
    assert "prefix-cache index available again" in log


def _kill_redis(cluster: LocalCluster) -> None:
    proc = dict(cluster.procs)["redis"]
    proc.kill()
    proc.wait(timeout=10)


def _restart_redis(cluster: LocalCluster, port: int) -> None:
    """A new redis-server on the dead one's port, stopped with the cluster."""
    new_proc, _ = start_redis(cluster.log_dir / "redis.log", port=port)
    cluster.procs = [(n, new_proc if n == "redis" else p) for n, p in cluster.procs]

"""FleetSignals and the Redis signal source, against a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from pdserve.config import SLOConfig
from pdserve.planner.signals import (
    REQUEST_STREAM_MAXLEN,
    FleetSignals,
    RedisSignalSource,
    RequestRecord,
    WorkerLoad,
    percentile,
    publish_request_record,
)

SLO = SLOConfig(ttft_ms=1000, itl_ms=100)


async def register(
    redis: Redis, worker_id: str, role: str, *, state: str = "ready", ttl_s: float | None = None,
    **load: float,
) -> None:
    fields = {
        "worker_id": worker_id, "role": role, "state": state, "endpoint": "10.0.0.1:50060",
        "model": "m",
        "num_running": "0", "num_waiting": "0", "kv_usage": "0", "queued_prefill_tokens": "0",
        "updated_at": str(time.time()),
    }
    fields.update({k: str(v) for k, v in load.items()})
    key = f"pdserve:worker:{worker_id}"
    await redis.hset(key, mapping=fields)  # type: ignore[arg-type]
    if ttl_s is not None:
        await redis.pexpire(key, int(ttl_s * 1000))
    await redis.sadd("pdserve:workers", worker_id)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 50) == 5.0
    assert percentile(values, 90) == 9.0
    assert percentile([3.0], 90) == 3.0
    assert percentile([], 90) is None


def test_record_round_trips_through_stream_fields() -> None:
    record = RequestRecord(t=12.5, prompt_tokens=300, output_tokens=20, ttft_s=0.25, itl_s=0.05)
    fields = {k.encode(): v.encode() for k, v in record.to_fields().items()}
    assert RequestRecord.from_fields(fields) == record
    with pytest.raises(ValueError, match="malformed request record"):
        RequestRecord.from_fields({"t": "x"})


def test_build_aggregates_records_and_workers() -> None:
    records = [
        RequestRecord(t=0, prompt_tokens=100, output_tokens=10, ttft_s=0.1 * i, itl_s=0.01 * i)
        for i in range(1, 11)
    ] + [RequestRecord(t=0, prompt_tokens=100, output_tokens=0, ttft_s=9.0, itl_s=0, ok=False)]
    workers = [
        WorkerLoad("p0", "prefill", "ready", num_running=2, queued_prefill_tokens=500),
        WorkerLoad("p1", "prefill", "draining", num_running=1, queued_prefill_tokens=100),
        WorkerLoad("d0", "decode", "ready", num_running=5, num_waiting=1, kv_usage=0.4),
        WorkerLoad("d1", "decode", "ready", num_running=3, kv_usage=0.6),
        WorkerLoad("x", "router", "ready", num_running=99),
    ]
    s = FleetSignals.build(at_s=100.0, window_s=10.0, slo=SLO, records=records, workers=workers)
    assert s.num_requests == 11 and s.num_failed == 1
    assert s.arrival_rate_rps == pytest.approx(1.1)
    assert s.mean_prompt_tokens == 100 and s.mean_output_tokens == pytest.approx(100 / 11)
    assert s.ttft_p50_s == pytest.approx(0.5) and s.ttft_p90_s == pytest.approx(0.9)
    assert s.itl_p90_s == pytest.approx(0.09)
    assert s.ttft_ratio == pytest.approx(0.9) and s.itl_ratio == pytest.approx(0.9)
    assert s.queued_prefill_tokens == 600
    assert s.decode_kv_usage == pytest.approx(0.5)
    assert s.num_running == {"prefill": 3, "decode": 8}
    assert s.num_waiting == {"prefill": 0, "decode": 1}
    assert s.replicas == {"prefill": 1, "decode": 2}  # draining workers are not capacity
    assert not s.is_idle


async def test_source_reads_the_window_and_live_workers(planner_redis: Redis) -> None:
    now = time.time()
    for i in range(20):
        await publish_request_record(
            planner_redis,
            RequestRecord(t=now, prompt_tokens=200, output_tokens=50, ttft_s=0.2 + 0.1 * (i % 10),
                          itl_s=0.05 + 0.01 * (i % 10)),
        )
    await register(planner_redis, "p0", "prefill", num_running=1, queued_prefill_tokens=1200)
    await register(planner_redis, "d0", "decode", num_running=7, kv_usage=0.9)
    await register(planner_redis, "d1", "decode", state="draining", num_running=2, kv_usage=0.1)
    await planner_redis.sadd("pdserve:workers", "gone")  # listed, hash expired long ago

    s = await RedisSignalSource(planner_redis, SLO, window_s=10.0).read()
    assert s.num_requests == 20
    assert s.arrival_rate_rps == pytest.approx(2.0)
    assert s.mean_prompt_tokens == 200
    assert s.ttft_p90_s == pytest.approx(1.0)
    assert s.ttft_slo_s == 1.0 and s.itl_slo_s == 0.1
    assert s.replicas == {"prefill": 1, "decode": 1}
    assert s.num_running == {"prefill": 1, "decode": 9}
    assert s.queued_prefill_tokens == 1200
    assert s.decode_kv_usage == pytest.approx(0.9)
    assert abs(s.at_s - time.time()) < 5


async def test_source_ignores_expired_workers(planner_redis: Redis) -> None:
    await register(planner_redis, "d0", "decode", ttl_s=0.2, num_running=3)
    source = RedisSignalSource(planner_redis, SLO, window_s=5.0)
    assert (await source.read()).replicas["decode"] == 1
    deadline = time.monotonic() + 5.0
    while await planner_redis.exists("pdserve:worker:d0"):
        assert time.monotonic() < deadline, "the worker hash did not expire"
        await asyncio.sleep(0.05)
    s = await source.read()
    assert s.replicas == {"prefill": 0, "decode": 0}
    assert s.num_running["decode"] == 0
    assert s.is_idle


async def test_source_window_excludes_old_records(planner_redis: Redis) -> None:
    seconds, _ = await planner_redis.time()
    old_id = f"{(int(seconds) - 120) * 1000}-0"
    record = RequestRecord(t=0, prompt_tokens=1, output_tokens=1, ttft_s=1, itl_s=0)
    await planner_redis.xadd("pdserve:requests", record.to_fields(), id=old_id)  # type: ignore[arg-type]
    await publish_request_record(planner_redis, record)
    await planner_redis.xadd("pdserve:requests", {"t": "garbage"})
    s = await RedisSignalSource(planner_redis, SLO, window_s=30.0).read()
    assert s.num_requests == 1  # the old one is outside, the malformed one skipped


async def test_publish_caps_the_stream(planner_redis: Redis) -> None:
    record = RequestRecord(t=1, prompt_tokens=1, output_tokens=1, ttft_s=0.1, itl_s=0.1)
    await publish_request_record(planner_redis, record, namespace="capped")
    info = await planner_redis.xinfo_stream("capped:requests")
    assert info["length"] == 1
    # MAXLEN ~ trims whole radix-tree nodes; fill past the cap and check it holds near it
    fill = "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'x', '1') end"
    await planner_redis.eval(fill, 1, "capped:requests", REQUEST_STREAM_MAXLEN + 2_000)  # type: ignore[misc]
    await publish_request_record(planner_redis, record, namespace="capped")
    length = await planner_redis.xlen("capped:requests")
    assert REQUEST_STREAM_MAXLEN <= length < REQUEST_STREAM_MAXLEN + 1_000


def test_source_validates_arguments() -> None:
    with pytest.raises(ValueError, match="window_s"):
        RedisSignalSource(None, SLO, window_s=0)  # type: ignore[arg-type]

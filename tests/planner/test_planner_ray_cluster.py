"""The planner against a real local Ray cluster: load grows the decode pool, idle shrinks it.

One Ray and one pdserve cluster (1 prefill + 1 decode actor on the tiny test model, Redis, the
router), the real pool manager behind ``RayActuator``, and the planner's loop
(``RedisSignalSource`` -> ``PlannerPolicy`` -> ``RayActuator``) running beside the clients. The
planner sees only what it sees in production: the router's request stream and the workers'
heartbeats in Redis.

The capacity model is calibrated for this test so that four concurrent streams need a second
decode worker (two streams per worker at the ITL SLO) and the decode pool may grow to two:
the point is the closed loop, not the calibration.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
from polling import wait_until
from redis.asyncio import Redis

from kv_transfer import allocate_port
from pdserve.client import Client
from pdserve.config import PdserveConfig, PlannerConfig, PoolBounds
from pdserve.launcher import ClusterSpec
from pdserve.planner.actuators import RayActuator
from pdserve.planner.policy import Decision, PlannerPolicy, WorkerCapacity
from pdserve.planner.runner import PlannerRunner
from pdserve.planner.signals import RedisSignalSource
from pdserve.ray_runtime.cluster import RayClusterOptions, RayLocalCluster
from pdserve.ray_runtime.node import RayOptions

pytestmark = pytest.mark.engine

ray = pytest.importorskip("ray")

REQUEST_TIMEOUT_S = 120.0
MAX_TOKENS = 48
LOAD_STREAMS = 4
INTERVAL_S = 1.0
COOLDOWN_S = 8.0


@dataclass
class Served:
    """One finished request: its token count and decode worker, or the error it got."""

    num_tokens: int
    decode_worker: str
    error: str = ""


class Load:
    """``streams`` client threads, each sending one request after another until stopped."""

    def __init__(self, address: str, streams: int) -> None:
        self.address = address
        self.stop = threading.Event()
        self.served: list[Served] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(streams)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        """Stops sending and waits for the requests in flight to end."""
        self.stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_S + 10)
            assert not thread.is_alive(), "a client thread hung"

    def workers(self) -> set[str]:
        with self._lock:
            return {s.decode_worker for s in self.served if not s.error}

    def _loop(self, stream: int) -> None:
        rng = random.Random(stream)
        with Client(self.address) as client:
            while not self.stop.is_set():
                prompt = [rng.randrange(100, 40_000) for _ in range(rng.randrange(20, 120))]
                self._record(self._one(client, prompt))

    def _one(self, client: Client, prompt: list[int]) -> Served:
        tokens = 0
        worker = ""
        try:
            for piece in client.generate(
                token_ids=prompt, max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True,
                timeout=REQUEST_TIMEOUT_S,
            ):
                tokens += len(piece.token_ids)
                worker = piece.timing.decode_worker or worker
        except grpc.RpcError as exc:
            return Served(tokens, worker, f"{exc.code().name}: {exc.details()}")
        return Served(tokens, worker)

    def _record(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)


@pytest.fixture(scope="module")
def planner_cluster(
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
    make_engine_config: Callable[[Path], PdserveConfig],
) -> Iterator[RayLocalCluster]:
    if ray.is_initialized():
        ray.shutdown()
    config = make_engine_config(tiny_model)
    config.planner = PlannerConfig(
        interval_s=INTERVAL_S,
        cooldown_s=COOLDOWN_S,
        max_total_workers=3,
        prefill=PoolBounds(min=1, max=1),
        decode=PoolBounds(min=1, max=2),
    )
    spec = ClusterSpec(
        config=config,
        num_prefill=1,
        num_decode=1,
        router_port=allocate_port("127.0.0.1"),
        router_http_port=0,
        cpu_bind=True,
        log_dir=tmp_path_factory.mktemp("planner-cluster-logs"),
    )
    options = RayClusterOptions(
        ray=RayOptions(num_cpus=2, include_dashboard=False),
        drain_timeout_s=60.0,
        reconcile_interval_s=1.0,
    )
    with RayLocalCluster(spec, options) as cluster:
        yield cluster


class Planner:
    """The planner's loop as ``pdserve planner`` runs it, as a task of the test's event loop."""

    def __init__(self, cluster: RayLocalCluster) -> None:
        config = cluster.spec.config
        self.redis = Redis.from_url(cluster.redis_url)
        self.decisions: list[Decision] = []
        source = RedisSignalSource(self.redis, config.slo, window_s=3 * INTERVAL_S)
        # Two streams per decode worker at the ITL SLO (each extra stream adds half a step).
        capacity = WorkerCapacity(decode_step_s=0.13, decode_step_growth=0.5)
        assert capacity.decode_streams_at(config.slo.itl_ms / 1000) == 2
        self.runner = PlannerRunner(
            source,
            PlannerPolicy(config.planner, config.slo, capacity=capacity),
            RayActuator.connect(),
            interval_s=INTERVAL_S,
        )
        step = self.runner.step

        async def recorded_step() -> Decision:
            decision = await step()
            self.decisions.append(decision)
            return decision

        self.runner.step = recorded_step  # type: ignore[method-assign]
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.runner.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 120)
        await self.redis.aclose()

    def changes(self, role: str) -> list[tuple[int, int, str]]:
        """(current, target, reason) of every decision that changed ``role``."""
        return [
            (d.pools[role].current, d.pools[role].target, d.pools[role].reason)
            for d in self.decisions
            if d.pools[role].changed
        ]


def _state(cluster: RayLocalCluster, worker: str) -> str | None:
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        state = client.hget(f"pdserve:worker:{worker}", "state")
    finally:
        client.close()
    return None if state is None else str(state)


async def test_load_grows_the_decode_pool_and_idle_shrinks_it(
    planner_cluster: RayLocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pdserve.planner")
    actuator = RayActuator.connect()
    assert await actuator.current() == {"prefill": 1, "decode": 1}
    planner = Planner(planner_cluster)
    planner.start()
    try:
        # Idle at the minimum: the planner holds.
        await wait_until(lambda: len(planner.decisions) >= 3, 60, "three planner rounds")
        assert await actuator.current() == {"prefill": 1, "decode": 1}
        assert planner.changes("decode") == [] and planner.changes("prefill") == []

        # Load: four concurrent streams need two decode workers.
        with Load(planner_cluster.router_address, LOAD_STREAMS) as load:
            await wait_until(
                lambda: planner.changes("decode"), 90, "the planner to order a second decode worker"
            )
            current, target, reason = planner.changes("decode")[0]
            assert (current, target) == (1, 2), reason
            assert "scale up" in reason and "streams" in reason
            await wait_until(
                lambda: _state(planner_cluster, "decode-1") == "ready", 240,
                "decode-1 to register ready",
            )
            await wait_until(
                lambda: "decode-1" in load.workers(), 120, "a request served by decode-1"
            )
            # Under load the planner keeps both (its cooldown has passed by now).
            assert await actuator.current() == {"prefill": 1, "decode": 2}
        served_under_load = list(load.served)

        # Idle: the decode pool goes back to its minimum, by draining.
        await wait_until(
            lambda: len(planner.changes("decode")) >= 2, 60, "the planner to shrink decode"
        )
        current, target, reason = planner.changes("decode")[1]
        assert (current, target) == (2, 1) and "idle" in reason, reason
        await wait_until(
            lambda: _state(planner_cluster, "decode-1") is None, 120,
            "decode-1 to leave the registry",
        )
        assert await actuator.current() == {"prefill": 1, "decode": 1}
    finally:
        await planner.close()
    # The shrunken cluster still serves (with the planner stopped, or this load would grow it
    # again: under this calibration even two streams ask for a second worker).
    with Load(planner_cluster.router_address, 2) as after:
        await wait_until(lambda: len(after.served) >= 4, 120, "requests after the shrink")

    assert served_under_load, "no request finished under load"
    assert [s for s in served_under_load + after.served if s.error or s.num_tokens != MAX_TOKENS] \
        == [], "a request failed or came back short"
    assert after.workers() == {"decode-0"}
    assert planner.changes("prefill") == [], "the prefill pool is pinned at one"
    assert len(planner.changes("decode")) == 2, planner.changes("decode")
    assert "planner decision" in caplog.text

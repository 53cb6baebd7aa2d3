"""pdserve on a real local Ray: worker actors, restarts, draining, metrics, clean shutdown.

One Ray and one cluster (1 prefill + 2 decode actors on the tiny test model) for the whole
module; the tests run in file order and the last one stops the cluster.
"""

from __future__ import annotations

import random
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import pytest
import redis
from polling import wait_for

from kv_transfer import allocate_port
from pdserve.client import Client
from pdserve.config import PdserveConfig
from pdserve.launcher import ClusterSpec
from pdserve.planner.actuators import RayActuator
from pdserve.ray_runtime.cluster import RayClusterOptions, RayLocalCluster
from pdserve.ray_runtime.names import RAY_NAMESPACE
from pdserve.ray_runtime.node import RayOptions

pytestmark = pytest.mark.engine

ray = pytest.importorskip("ray")

REQUEST_TIMEOUT_S = 120.0


@dataclass
class Outcome:
    """What one streamed request produced."""

    num_tokens: int = 0
    decode_worker: str = ""
    error: grpc.StatusCode | None = None
    first_token: threading.Event = field(default_factory=threading.Event)


def _stream(address: str, prompt: list[int], max_tokens: int, outcome: Outcome) -> None:
    try:
        with Client(address) as client:
            for piece in client.generate(
                token_ids=prompt, max_tokens=max_tokens, temperature=0, ignore_eos=True,
                timeout=REQUEST_TIMEOUT_S,
            ):
                outcome.num_tokens += len(piece.token_ids)
                outcome.first_token.set()
                if piece.timing.decode_worker:
                    outcome.decode_worker = piece.timing.decode_worker
    except grpc.RpcError as exc:
        outcome.error = exc.code()
    finally:
        outcome.first_token.set()


def _prompt(seed: int, length: int = 40) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 40_000) for _ in range(length)]


def _registry(cluster: RayLocalCluster) -> redis.Redis:
    return redis.Redis.from_url(cluster.redis_url, decode_responses=True)


@pytest.fixture(scope="module")
def preexisting_pids() -> set[int]:
    """Child processes of this test process from before the module (other modules' fixtures)."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture(scope="module")
def ray_cluster(
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
    preexisting_pids: set[int],
    make_engine_config: Callable[[Path], PdserveConfig],
) -> Iterator[RayLocalCluster]:
    if ray.is_initialized():
        ray.shutdown()
    spec = ClusterSpec(
        config=make_engine_config(tiny_model),
        num_prefill=1,
        num_decode=2,
        router_port=allocate_port("127.0.0.1"),
        router_http_port=0,
        cpu_bind=True,
        log_dir=tmp_path_factory.mktemp("ray-cluster-logs"),
    )
    # Taking turns (not cache/load-aware routing) spreads concurrent requests over both decode
    # workers, so the drain test always has requests in flight on the worker it drains.
    spec.config.router.routing.policy = "round_robin"
    options = RayClusterOptions(
        ray=RayOptions(
            num_cpus=2,
            include_dashboard=False,
            metrics_export_port=allocate_port("127.0.0.1"),
            system_config={"metrics_report_interval_ms": 1000},
        ),
        drain_timeout_s=60.0,
        reconcile_interval_s=1.0,
    )
    cluster = RayLocalCluster(spec, options)
    with cluster:
        yield cluster


def test_workers_are_named_actors_serving_through_the_router(ray_cluster: RayLocalCluster) -> None:
    rows = ray_cluster.workers()
    assert [(w["name"], w["worker_id"], w["state"]) for w in rows] == [
        ("pdserve:decode:0", "decode-0", "ready"),
        ("pdserve:decode:1", "decode-1", "ready"),
        ("pdserve:prefill:0", "prefill-0", "ready"),
    ]
    for row in rows:
        assert ray.get_actor(row["name"], namespace=RAY_NAMESPACE) is not None
    assert sorted(ray_cluster.worker_endpoints) == ["decode-0", "decode-1", "prefill-0"]
    with Client(ray_cluster.router_address) as client:
        for seed in range(4):
            _, ids, last = client.complete(
                token_ids=_prompt(seed, 300), max_tokens=8, temperature=0, ignore_eos=True,
                timeout=REQUEST_TIMEOUT_S,
            )
            assert len(ids) == 8
            assert last.timing.prefill_worker == "prefill-0"
            assert last.timing.decode_worker in ("decode-0", "decode-1")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def _sample(text: str, name: str, **tags: str) -> float | None:
    """The sum of the samples of ``name`` whose tags include ``tags``."""
    total = None
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(labels.get(k) == v for k, v in tags.items()):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_reach_the_ray_prometheus_export(ray_cluster: RayLocalCluster) -> None:
    assert ray_cluster.ray_node is not None
    port = ray_cluster.ray_node.metrics_export_port
    assert port > 0
    wanted = {
        ("ray_pdserve_worker_generated_tokens_total", "decode"): lambda v: v > 0,
        ("ray_pdserve_worker_ttft_seconds_count", "decode"): lambda v: v > 0,
        ("ray_pdserve_worker_ttft_seconds_count", "prefill"): lambda v: v > 0,
        ("ray_pdserve_worker_itl_seconds_count", "decode"): lambda v: v > 0,
        ("ray_pdserve_worker_kv_usage", "decode"): lambda v: 0 <= v <= 2,
        ("ray_pdserve_worker_requests_running", "prefill"): lambda v: v >= 0,
        ("ray_pdserve_worker_ready", "decode"): lambda v: v == 2,
        ("ray_pdserve_kv_transfer_blocks_total", "decode"): lambda v: v > 0,
        ("ray_pdserve_worker_prompt_tokens_total", "prefill"): lambda v: v > 0,
        ("ray_pdserve_pool_desired_workers", "decode"): lambda v: v == 2,
    }
    missing: list[str] = []

    def all_present() -> bool:
        text = _scrape(port)
        missing[:] = [
            f"{name}{{role={role}}}"
            for (name, role), ok in wanted.items()
            if (value := _sample(text, name, role=role)) is None or not ok(value)
        ]
        return not missing

    try:
        wait_for("the pdserve metrics in Ray's export", all_present, 60, every_s=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; missing or wrong: {missing}") from None


def test_a_killed_decode_actor_is_restarted_and_reregisters(ray_cluster: RayLocalCluster) -> None:
    client = _registry(ray_cluster)
    before = client.hgetall("pdserve:worker:decode-1")
    assert before["state"] == "ready"
    outcomes = [Outcome() for _ in range(4)]
    threads = [
        threading.Thread(target=_stream, args=(ray_cluster.router_address, _prompt(10 + i), 300, o))
        for i, o in enumerate(outcomes)
    ]
    for thread in threads:
        thread.start()
    for outcome in outcomes:
        assert outcome.first_token.wait(REQUEST_TIMEOUT_S)

    pid = {w["name"]: w for w in ray_cluster.workers()}["pdserve:decode:1"]["pid"]
    old_processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    assert len(old_processes) > 1, "the actor should have spawned its engine-core process"

    ray.kill(ray.get_actor("pdserve:decode:1", namespace=RAY_NAMESPACE), no_restart=False)

    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S + 10)
        assert not thread.is_alive(), "a request in flight on the killed worker hung"
    for outcome in outcomes:
        # Finished in full, or failed with a status (never a deadline: nothing may hang).
        if outcome.error is None:
            assert outcome.num_tokens == 300
        else:
            assert outcome.error != grpc.StatusCode.DEADLINE_EXCEEDED

    def reregistered() -> bool:
        now = client.hgetall("pdserve:worker:decode-1")
        return now.get("state") == "ready" and now.get("endpoint") != before["endpoint"]

    wait_for("decode-1 to come back in the registry", reregistered, 180)
    _, alive = psutil.wait_procs(old_processes, timeout=60)
    assert [p.pid for p in alive] == [], "the killed actor's engine process outlived it"
    assert client.scard("pdserve:workers") == 3  # replaced, not duplicated
    rows = {w["name"]: w for w in ray_cluster.workers()}
    assert rows["pdserve:decode:1"]["restarts"] == 1
    assert rows["pdserve:decode:0"]["restarts"] == 0
    client.close()

    served = set()
    with Client(ray_cluster.router_address) as router:
        for seed in range(6):
            _, ids, last = router.complete(
                token_ids=_prompt(100 + seed, 200), max_tokens=4, temperature=0, ignore_eos=True,
                timeout=REQUEST_TIMEOUT_S,
            )
            assert len(ids) == 4
            served.add(last.timing.decode_worker)
    assert served <= {"decode-0", "decode-1"}


async def test_scaling_decode_down_drains_without_failing_requests(
    ray_cluster: RayLocalCluster,
) -> None:
    actuator = RayActuator.connect()  # the planner's way in: finds the real pool manager
    assert await actuator.current() == {"prefill": 1, "decode": 2}
    outcomes = [Outcome() for _ in range(6)]
    threads = [
        threading.Thread(target=_stream, args=(ray_cluster.router_address, _prompt(50 + i), 400, o))
        for i, o in enumerate(outcomes)
    ]
    for thread in threads:
        thread.start()
    for outcome in outcomes:
        assert outcome.first_token.wait(REQUEST_TIMEOUT_S)

    await actuator.scale("decode", 1)

    assert await actuator.current() == {"prefill": 1, "decode": 1}
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S + 10)
    assert [(o.error, o.num_tokens) for o in outcomes] == [(None, 400)] * len(outcomes)
    assert "decode-1" in {o.decode_worker for o in outcomes}, "no request ran on the drained one"
    client = _registry(ray_cluster)
    assert not client.exists("pdserve:worker:decode-1")
    client.close()
    with pytest.raises(ValueError):
        ray.get_actor("pdserve:decode:1", namespace=RAY_NAMESPACE)
    assert [w["name"] for w in ray_cluster.workers()] == ["pdserve:decode:0", "pdserve:prefill:0"]


def test_stop_leaves_no_process_behind(
    ray_cluster: RayLocalCluster, preexisting_pids: set[int]
) -> None:
    children = [
        p for p in psutil.Process().children(recursive=True) if p.pid not in preexisting_pids
    ]
    assert children, "Ray's processes should be children of this test process"
    ray_cluster.stop()
    assert not ray.is_initialized()
    _, alive = psutil.wait_procs(children, timeout=60)
    assert [(p.pid, p.name()) for p in alive if p.is_running()] == []

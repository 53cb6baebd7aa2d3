"""The Ray-free parts of pdserve.ray_runtime: names, placement options, pool bookkeeping,
counter deltas and stream instrumentation (milliseconds, no Ray, no engine)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import pytest

from pdserve.ray_runtime import (
    MemberState,
    PlacementError,
    PlacementPolicy,
    PoolBook,
    actor_name,
    parse_actor_name,
    resource_name,
    worker_actor_options,
    worker_id,
)
from pdserve.ray_runtime.instrumentation import instrument_engine, observe_stream
from pdserve.ray_runtime.metrics import DeltaTracker
from pdserve.ray_runtime.node import local_pool_resources
from pdserve.ray_runtime.placement import cpu_core_for
from pdserve.ray_runtime.status import RayStatus, format_ray_status


def test_names_are_stable_per_role_and_index() -> None:
    assert actor_name("decode", 1) == "pdserve:decode:1"
    assert worker_id("decode", 1) == "decode-1"
    assert parse_actor_name("pdserve:prefill:12") == ("prefill", 12)
    assert resource_name("prefill") == "pdserve_prefill"
    for bad in ("pdserve:decode", "other:decode:1", "pdserve:decode:x", "pdserve:router:0"):
        with pytest.raises(ValueError):
            parse_actor_name(bad)
    with pytest.raises(ValueError, match="unknown pool 'router'"):
        actor_name("router", 0)
    with pytest.raises(ValueError, match="index"):
        worker_id("decode", -1)


def test_placement_asks_for_the_pool_resource_and_a_gpu_when_there_are_gpus() -> None:
    gpus = worker_actor_options(
        "decode", 2, model="m", cluster_resources={"GPU": 8, "pdserve_decode": 4}
    )
    assert gpus["name"] == "pdserve:decode:2"
    assert gpus["namespace"] == "pdserve"
    assert gpus["resources"] == {"pdserve_decode": 1}
    assert (gpus["num_gpus"], gpus["num_cpus"]) == (1, 1.0)
    assert gpus["max_restarts"] == 3
    assert gpus["_labels"] == {"pdserve.io/role": "decode", "pdserve.io/model": "m"}

    cpus = worker_actor_options(
        "prefill", 0, model="m", cluster_resources={"CPU": 2, "pdserve_prefill": 64}
    )
    assert "num_gpus" not in cpus
    assert 3 * cpus["num_cpus"] <= 2  # three CPU workers fit on two cores

    forced = worker_actor_options(
        "prefill", 0, model="m", cluster_resources={"GPU": 1, "pdserve_prefill": 1},
        policy=PlacementPolicy(use_gpus=False, max_restarts=-1),
    )
    assert "num_gpus" not in forced and forced["max_restarts"] == -1


def test_cpu_engines_sharing_a_machine_spread_over_its_cores() -> None:
    cores = [cpu_core_for(role, i, 2) for role, i in
             (("prefill", 0), ("decode", 0), ("decode", 1), ("prefill", 1))]
    assert cores == [0, 1, 1, 0]
    assert cpu_core_for("decode", 7, 1) == 0
    with pytest.raises(ValueError):
        cpu_core_for("decode", 0, 0)


def test_placement_refuses_a_cluster_without_the_pool_resource() -> None:
    with pytest.raises(PlacementError, match="pdserve_decode"):
        worker_actor_options("decode", 0, model="m", cluster_resources={"CPU": 8, "GPU": 8})
    with pytest.raises(ValueError):
        PlacementPolicy(max_restarts=-2)
    assert set(local_pool_resources()) == {"pdserve_prefill", "pdserve_decode"}


def test_pool_book_creates_lowest_free_indices_and_drains_newest_first() -> None:
    book = PoolBook()
    plan = book.plan("decode", 3)
    assert (plan.create, plan.drain) == ([0, 1, 2], [])
    for i in plan.create:
        book.set_state("decode", i, MemberState.READY)
    assert book.sizes() == {"prefill": 0, "decode": 3}

    plan = book.plan("decode", 1)
    assert (plan.create, plan.drain) == ([], [2, 1])
    for i in plan.drain:
        book.set_state("decode", i, MemberState.DRAINING)
    assert book.size("decode") == 1  # draining members do not count
    assert book.plan("decode", 1).drain == []  # nor are they drained twice

    book.remove("decode", 2)
    plan = book.plan("decode", 3)
    assert plan.create == [2, 3]  # index 1 is still draining: its name is taken
    assert book.desired["decode"] == 3
    assert book.pick_to_drain("decode", 5) == [0]
    with pytest.raises(ValueError, match=">= 0"):
        book.plan("decode", -1)
    with pytest.raises(ValueError, match="unknown pool"):
        book.plan("router", 1)


def test_delta_tracker_turns_totals_into_increments_and_survives_a_reset() -> None:
    deltas = DeltaTracker()
    assert deltas.delta("bytes", 100) == 100
    assert deltas.delta("bytes", 250) == 150
    assert deltas.delta("bytes", 250) == 0
    assert deltas.delta("bytes", 40) == 40  # a new engine counts from zero
    assert deltas.delta("other", 7) == 7


@dataclass
class _Completion:
    token_ids: list[int]


@dataclass
class _Output:
    outputs: list[_Completion] = field(default_factory=list)


class _Recorder:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.itl: list[tuple[float, int]] = []
        self.tokens = 0
        self.requests = 0

    def observe_first_token(self, seconds: float) -> None:
        self.ttft.append(seconds)

    def observe_next_tokens(self, seconds: float, num_tokens: int) -> None:
        self.itl.append((seconds, num_tokens))

    def add_generated(self, num_tokens: int) -> None:
        self.tokens += num_tokens

    def add_request(self) -> None:
        self.requests += 1


class _Clock:
    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


async def _outputs(closed: list[bool], *sizes: int) -> AsyncGenerator[_Output, None]:
    try:
        for n in sizes:
            yield _Output([_Completion(list(range(n)))])
    finally:
        closed.append(True)


async def test_observe_stream_reports_ttft_gaps_and_tokens_and_passes_outputs_through() -> None:
    recorder = _Recorder()
    closed: list[bool] = []
    stream = observe_stream(_outputs(closed, 1, 0, 2, 1), recorder, _Clock(10.0, 10.5, 11.1, 11.2))
    seen = [len(o.outputs[0].token_ids) async for o in stream]
    assert seen == [1, 0, 2, 1]
    assert recorder.ttft == [pytest.approx(0.5)]
    assert recorder.itl == [(pytest.approx(0.6), 2), (pytest.approx(0.1), 1)]
    assert (recorder.tokens, recorder.requests, closed) == (4, 1, [True])


async def test_closing_an_instrumented_stream_early_closes_the_engine_stream() -> None:
    closed: list[bool] = []

    class Engine:
        def generate(self, *sizes: int) -> AsyncGenerator[_Output, None]:
            return _outputs(closed, *sizes)

    engine = Engine()
    recorder = _Recorder()
    instrument_engine(engine, recorder)
    instrument_engine(engine, recorder)  # idempotent: observed once
    stream = engine.generate(3, 1, 1)
    first = await stream.__anext__()
    await stream.aclose()
    assert len(first.outputs[0].token_ids) == 3
    assert closed == [True]
    assert (recorder.tokens, recorder.requests, len(recorder.ttft)) == (3, 1, 1)


def test_ray_status_lists_pools_and_actors_with_the_dashboard_url() -> None:
    status = RayStatus(
        address="10.0.0.1:6379",
        dashboard_url="http://10.0.0.1:8265",
        manager={"model": "m", "desired": {"prefill": 1, "decode": 2},
                 "sizes": {"prefill": 1, "decode": 1}},
        workers=[
            {"name": "pdserve:decode:0", "worker_id": "decode-0", "state": "ready",
             "restarts": 2, "endpoint": "10.0.0.2:50060", "node": "pod-a", "running": 3,
             "waiting": 1, "kv_usage": 0.25},
            {"name": "pdserve:prefill:0", "worker_id": "prefill-0", "state": "failed",
             "error": "OSError: no model"},
        ],
    )
    text = format_ray_status(status)
    assert "dashboard       http://10.0.0.1:8265" in text
    assert "pool decode     1 worker(s), desired 2" in text
    row = next(line for line in text.splitlines() if line.startswith("pdserve:decode:0"))
    assert row.split()[:5] == ["pdserve:decode:0", "decode-0", "ready", "2", "10.0.0.2:50060"]
    assert "25.0%" in row
    assert "error: OSError: no model" in text
    assert "no pdserve pool manager" in format_ray_status(RayStatus("a", ""))

"""The runner against a real gRPC server on loopback (the scripted router of conftest.py)."""

from __future__ import annotations

import itertools
import math
import socket

import pytest
from bench_scripted_router import FIRST_TOKEN_S, OUTPUT_BASE_ID, TOKEN_GAP_S, ScriptedRouter

from pdserve.bench.arrivals import ArrivalProcess
from pdserve.bench.metrics import itls_s, summarize, ttft_s
from pdserve.bench.record import RequestRecord
from pdserve.bench.runner import (
    STATUS_SKIPPED,
    RunOptions,
    Target,
    TargetUnavailableError,
    run_benchmark,
    run_interleaved,
)
from pdserve.bench.workloads import Prompt, Session, Turn, multi_turn_workload, random_workload

# Scheduling slack of a loaded test machine; the schedule's steps are 50 ms and more.
LATE_S = 0.04


def _target(router: ScriptedRouter, name: str = "fake") -> Target:
    return Target(name, router.address)


async def test_ttft_and_itl_follow_the_servers_schedule(scripted_router: ScriptedRouter) -> None:
    sessions = random_workload(3, input_len=16, output_len=6, seed=1)
    seen: list[RequestRecord] = []
    result = await run_benchmark(_target(scripted_router), sessions, ArrivalProcess(),
                                 RunOptions(model="ok:timing"), on_record=seen.append)
    assert len(result.records) == 3 and len(seen) == 3
    for record in result.records:
        assert record.success, record.error
        assert record.status == "OK" and record.finish_reason == "FINISH_REASON_LENGTH"
        assert record.completion_tokens == 6 and record.prompt_tokens == 16
        assert record.chunk_tokens == [1] * 6
        ttft = ttft_s(record)
        assert ttft is not None and FIRST_TOKEN_S <= ttft <= FIRST_TOKEN_S + LATE_S
        gaps = itls_s(record)
        assert len(gaps) == 5
        assert all(TOKEN_GAP_S - LATE_S <= g <= TOKEN_GAP_S + LATE_S for g in gaps), gaps
        # the absolute schedule: token i leaves the server at FIRST + i * GAP after arrival
        last = record.chunk_s[-1] - record.send_s
        assert FIRST_TOKEN_S + 5 * TOKEN_GAP_S <= last <= FIRST_TOKEN_S + 5 * TOKEN_GAP_S + LATE_S
        assert record.end_s is not None and record.end_s >= record.chunk_s[-1]
        assert record.server_timing["decode_worker"] == "decode-0"
    summary = summarize(result.records, result.duration_s)
    assert summary.itl.median_ms == pytest.approx(TOKEN_GAP_S * 1000, abs=LATE_S * 1000)
    assert result.duration_s >= FIRST_TOKEN_S + 5 * TOKEN_GAP_S


async def test_the_server_gets_exact_token_ids_and_ignore_eos(
        scripted_router: ScriptedRouter) -> None:
    sessions = random_workload(2, input_len=9, output_len=3, seed=2)
    result = await run_benchmark(_target(scripted_router), sessions, ArrivalProcess(),
                                 RunOptions(model="ok:wire", temperature=0.0))
    received = scripted_router.servicer.received["ok:wire"]
    assert len(received) == 2
    sent_ids = {tuple(r.request.token_ids.ids) for r in received}
    assert sent_ids == {s.turns[0].prompt.ids for s in sessions}
    for r in received:
        assert r.request.sampling.ignore_eos and r.request.sampling.max_tokens == 3
        assert r.request.sampling.HasField("temperature")
        assert r.request.sampling.temperature == 0.0
    assert {r.request.request_id for r in received} == {r.request_id for r in result.records}


async def test_text_prompts_are_sent_as_text(scripted_router: ScriptedRouter) -> None:
    sessions = [Session((Turn(Prompt(text="one two three four"), 2),))]
    result = await run_benchmark(_target(scripted_router), sessions, ArrivalProcess(),
                                 RunOptions(model="ok:text"))
    (received,) = scripted_router.servicer.received["ok:text"]
    assert received.request.prompt == "one two three four"
    record = result.records[0]
    assert record.prompt_len is None and record.prompt_tokens == 4  # from the server's usage


async def test_resource_exhausted_is_recorded_with_its_status(
        scripted_router: ScriptedRouter) -> None:
    sessions = random_workload(2, input_len=4, output_len=4, seed=3)
    result = await run_benchmark(_target(scripted_router), sessions, ArrivalProcess(),
                                 RunOptions(model="exhausted:a"))
    for record in result.records:
        assert not record.success
        assert record.status == "RESOURCE_EXHAUSTED"
        assert record.error == "no decode capacity left"
        assert record.chunk_s == []
    summary = summarize(result.records, result.duration_s)
    assert summary.errors == {"RESOURCE_EXHAUSTED": 2} and summary.completed == 0


async def test_an_abort_mid_stream_keeps_the_chunks_and_the_status(
        scripted_router: ScriptedRouter) -> None:
    sessions = random_workload(1, input_len=4, output_len=5, seed=4)
    result = await run_benchmark(_target(scripted_router), sessions, ArrivalProcess(),
                                 RunOptions(model="abort-after-2:a"))
    (record,) = result.records
    assert record.status == "UNAVAILABLE" and record.error == "decode worker died"
    assert len(record.chunk_s) == 2 and not record.success


async def test_a_stream_without_final_message_is_a_failure(
        scripted_router: ScriptedRouter) -> None:
    sessions = random_workload(1, input_len=4, output_len=2, seed=5)
    result = await run_benchmark(_target(scripted_router), sessions, ArrivalProcess(),
                                 RunOptions(model="no-finish:a"))
    (record,) = result.records
    assert record.status == "OK" and len(record.chunk_s) == 2
    assert not record.success and "finish reason" in record.error


async def test_the_deadline_is_enforced_and_recorded(scripted_router: ScriptedRouter) -> None:
    sessions = random_workload(1, input_len=4, output_len=2, seed=6)
    result = await run_benchmark(_target(scripted_router), sessions, ArrivalProcess(),
                                 RunOptions(model="stall:a", timeout_s=0.3))
    (record,) = result.records
    assert record.status == "DEADLINE_EXCEEDED"
    assert record.end_s is not None and 0.3 <= record.end_s - record.send_s < 2.0


async def test_concurrency_cap_is_never_exceeded_and_is_reached(
        scripted_router: ScriptedRouter) -> None:
    sessions = random_workload(6, input_len=4, output_len=3, seed=7)
    result = await run_benchmark(_target(scripted_router), sessions, ArrivalProcess(),
                                 RunOptions(model="ok:conc", max_concurrency=2, num_channels=2))
    assert all(r.success for r in result.records)
    assert scripted_router.servicer.max_in_flight["ok:conc"] == 2
    # a closed loop of 2 clients: 3 waves of requests of ~0.2 s each
    assert result.duration_s >= 3 * (FIRST_TOKEN_S + 2 * TOKEN_GAP_S)


async def test_requests_leave_on_the_arrival_schedule(scripted_router: ScriptedRouter) -> None:
    sessions = random_workload(4, input_len=4, output_len=1, seed=8)
    arrivals = ArrivalProcess(rate=10.0, burstiness=math.inf)
    result = await run_benchmark(_target(scripted_router), sessions, arrivals,
                                 RunOptions(model="ok:paced"))
    scheduled = sorted(r.scheduled_s for r in result.records)
    assert scheduled == pytest.approx([0.1, 0.2, 0.3, 0.4])
    for record in result.records:
        assert record.scheduled_s <= record.send_s <= record.scheduled_s + LATE_S


async def test_multi_turn_prompts_extend_the_previous_turn_and_its_output(
        scripted_router: ScriptedRouter) -> None:
    sessions = multi_turn_workload(2, turns=3, input_len=5, user_turn_len=2, output_len=3,
                                   seed=9)
    result = await run_benchmark(_target(scripted_router), sessions, ArrivalProcess(),
                                 RunOptions(model="ok:turns"))
    assert all(r.success for r in result.records) and len(result.records) == 6
    prompts = {tuple(r.request.token_ids.ids) for r in
               scripted_router.servicer.received["ok:turns"]}
    output = tuple(OUTPUT_BASE_ID + i for i in range(3))
    for index, session in enumerate(sessions):
        expected = session.turns[0].prompt.ids
        assert expected is not None
        for k in range(3):
            if k:
                user = session.turns[k].prompt.ids
                assert user is not None
                expected = expected + output + user
            assert expected in prompts
        records = sorted((r for r in result.records if r.session == index), key=lambda r: r.turn)
        assert [r.prompt_len for r in records] == [5, 10, 15]
        for earlier, later in itertools.pairwise(records):
            assert later.send_s >= earlier.chunk_s[-1]


async def test_a_failed_turn_skips_the_rest_of_its_conversation(
        scripted_router: ScriptedRouter) -> None:
    sessions = multi_turn_workload(1, turns=3, input_len=5, user_turn_len=2, output_len=3,
                                   seed=10)
    result = await run_benchmark(_target(scripted_router), sessions, ArrivalProcess(),
                                 RunOptions(model="fail-long-6:a"))
    statuses = [r.status for r in sorted(result.records, key=lambda r: r.turn)]
    assert statuses == ["OK", "RESOURCE_EXHAUSTED", STATUS_SKIPPED]
    assert len(scripted_router.servicer.received["fail-long-6:a"]) == 2


async def test_interleaved_sends_every_session_to_every_target_alternately(
        scripted_router: ScriptedRouter, second_scripted_router: ScriptedRouter) -> None:
    sessions = random_workload(3, input_len=6, output_len=2, seed=11)
    targets = [_target(scripted_router, "a"), _target(second_scripted_router, "b")]
    arrivals = ArrivalProcess(rate=10.0, burstiness=math.inf)
    result = await run_interleaved(targets, sessions, arrivals, RunOptions(model="ok:inter"))
    assert len(result.records) == 6
    ordered = sorted(result.records, key=lambda r: r.scheduled_s)
    assert [r.target for r in ordered] == ["a", "b"] * 3
    assert [r.session for r in ordered] == [0, 0, 1, 1, 2, 2]
    # each target sees the configured per-target rate: 20 arrivals/s merged
    assert [r.scheduled_s for r in ordered] == pytest.approx([0.05 * i for i in range(1, 7)])
    for router in (scripted_router, second_scripted_router):
        got = [tuple(r.request.token_ids.ids) for r in router.servicer.received["ok:inter"]]
        assert got == [s.turns[0].prompt.ids for s in sessions]


async def test_an_unreachable_target_fails_before_the_run() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TargetUnavailableError, match="did not accept a connection"):
        await run_benchmark(Target("gone", f"127.0.0.1:{port}"),
                            random_workload(1, 4, 1), ArrivalProcess(),
                            RunOptions(connect_timeout_s=0.5))


def test_target_parsing() -> None:
    assert Target.parse("agg=10.0.0.1:50051") == Target("agg", "10.0.0.1:50051")
    assert Target.parse("localhost:50051") == Target("localhost_50051", "localhost:50051")
    for bad in ("a=localhost", "a=:80", "a b=h:1", "a=h:99999"):
        with pytest.raises(ValueError):
            Target.parse(bad)


def test_run_options_validation() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        RunOptions(max_concurrency=0)
    with pytest.raises(ValueError, match="timeout_s"):
        RunOptions(timeout_s=0)

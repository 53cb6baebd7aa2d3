"""The aiohttp application over a scripted router core: SSE framing, error statuses, /metrics,
/health and cancellation, in milliseconds. The real core and engines are exercised by
test_http_openai_sdk.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from pdserve.config import PdserveConfig
from pdserve.errors import NoWorkerAvailable, Overloaded, PdserveError, WorkerFailed
from pdserve.v1 import generation_pb2
from router.http import HttpServer, build_app
from router.policy import DecisionKind, RoutingStats
from router.server import RouterStats


class _View:
    def __init__(self) -> None:
        self.counts = {"prefill": 1, "decode": 1}

    def ready(self, role: str, model: str) -> list[str]:
        return ["w"] * self.counts[role]


class ScriptedCore:
    """Stands in for GenerationServicer: answers each request with a fixed script."""

    def __init__(self) -> None:
        self.config = PdserveConfig()
        self.config.model.name = "tiny"
        self.max_model_len = 512
        self.view = _View()
        self.stats = RouterStats()
        self.routing_stats = RoutingStats()
        self.num_inflight = 0
        self.requests: list[generation_pb2.GenerateRequest] = []
        self.error_before: PdserveError | None = None
        self.error_after: PdserveError | None = None
        self.pieces = ["Hel", "lo", "!"]
        self.hold = asyncio.Event()
        self.hold.set()
        self.closed = asyncio.Event()

    async def stream(
        self, request: generation_pb2.GenerateRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        self.requests.append(request)
        try:
            if self.error_before is not None:
                raise self.error_before
            for i, text in enumerate(self.pieces):
                response = generation_pb2.GenerateResponse(
                    request_id=request.request_id, text=text, token_ids=[10 + i]
                )
                if i == len(self.pieces) - 1:
                    if self.error_after is not None:
                        raise self.error_after
                    response.finish_reason = generation_pb2.FINISH_REASON_LENGTH
                    response.usage.prompt_tokens = 4
                    response.usage.completion_tokens = len(self.pieces)
                    response.usage.cached_prompt_tokens = 2
                yield response
                await self.hold.wait()
        finally:
            self.closed.set()


@pytest.fixture
async def served() -> AsyncIterator[tuple[ScriptedCore, TestClient[Any, Any]]]:
    core = ScriptedCore()
    client = TestClient(TestServer(build_app(core)))  # type: ignore[arg-type]
    await client.start_server()
    try:
        yield core, client
    finally:
        await client.close()


def _events(raw: str) -> list[Any]:
    assert raw.endswith("\n\n")
    events = []
    for block in raw.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_completion_stream_with_usage(served: Any) -> None:
    core, client = served
    answer = await client.post(
        "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "Hi",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers={"X-Request-Id": "abc"},
    )
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    events = _events(await answer.text())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["Hel", "lo", "!"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, "length"]
    assert all(c["id"] == "cmpl-abc" and c["object"] == "text_completion" for c in chunks)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 3,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    assert core.requests[0].request_id == "abc"


async def test_chat_stream_starts_with_the_role(served: Any) -> None:
    _, client = served
    answer = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hi"}], "stream": True},
    )
    events = _events(await answer.text())
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"]["content"] for e in events[1:-1]) == "Hello!"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in e for e in events[:-1])
    assert events[-1] == "[DONE]"


async def test_non_streamed_answers(served: Any) -> None:
    _, client = served
    completion = await (await client.post("/v1/completions", json={"prompt": "Hi"})).json()
    assert completion["choices"][0]["text"] == "Hello!"
    assert completion["usage"]["total_tokens"] == 7
    chat = await (
        await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]}
        )
    ).json()
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "Hello!"}
    assert chat["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (Overloaded("busy"), 429, "overloaded"),
        (NoWorkerAvailable("no decode worker"), 503, "no_worker_available"),
    ],
)
async def test_core_errors_before_the_first_token_get_their_status(
    served: Any, error: PdserveError, status: int, code: str
) -> None:
    core, client = served
    core.error_before = error
    for stream in (False, True):
        answer = await client.post("/v1/completions", json={"prompt": "Hi", "stream": stream})
        assert answer.status == status
        body = await answer.json()
        assert body["error"]["code"] == code
        assert body["error"]["message"] == str(error)
        assert ("Retry-After" in answer.headers) == (status == 429)


async def test_an_error_mid_stream_is_a_last_error_event(served: Any) -> None:
    core, client = served
    core.error_after = WorkerFailed("decode worker died")
    answer = await client.post("/v1/completions", json={"prompt": "Hi", "stream": True})
    assert answer.status == 200
    events = _events(await answer.text())
    assert events[-2]["error"]["code"] == "worker_failed"
    assert events[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("path", "data", "status", "code"),
    [
        ("/v1/completions", b"{not json", 400, "invalid_json"),
        ("/v1/completions", b"[1, 2]", 400, "invalid_json"),
        ("/v1/completions", b'{"model": "other", "prompt": "x"}', 404, "model_not_found"),
        ("/v1/completions", b'{"prompt": "x", "echo": true}', 400, "unsupported_parameter"),
        ("/v1/nothing", b"{}", 404, "not_found"),
    ],
)
async def test_http_level_errors_have_the_openai_shape(
    served: Any, path: str, data: bytes, status: int, code: str
) -> None:
    core, client = served
    answer = await client.post(path, data=data, headers={"Content-Type": "application/json"})
    assert answer.status == status
    body = await answer.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert not core.requests  # refused before reaching the core


async def test_models_health_and_metrics(served: Any) -> None:
    core, client = served
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["max_model_len"] == 512
    assert (await client.get("/health")).status == 200
    core.view.counts["decode"] = 0
    assert (await client.get("/health")).status == 503

    core.stats.num_requests = 5
    core.stats.num_ok = 3
    core.stats.num_failed = 2
    core.stats.num_disaggregated = 2
    core.stats.num_decode_only = 1
    core.stats.prompt_tokens = 100
    core.stats.cached_prompt_tokens = 40
    core.num_inflight = 1
    core.routing_stats.observe_decision(DecisionKind.DISAGGREGATED, "uncached_prefill", 300, 256)
    core.routing_stats.observe_decision(DecisionKind.DECODE_ONLY, "short_uncached", 100, 0)
    core.routing_stats.observe_lookup(0.0003)
    core.routing_stats.observe_lookup_failure()
    answer = await client.get("/metrics")
    assert answer.headers["Content-Type"].startswith("text/plain")
    text = await answer.text()
    for line in (
        "pdserve_router_requests_total 5.0",
        'pdserve_router_requests_finished_total{result="ok"} 3.0',
        'pdserve_router_requests_finished_total{result="failed"} 2.0',
        "pdserve_router_requests_in_flight 1.0",
        "pdserve_router_prompt_tokens_total 100.0",
        "pdserve_router_cached_prompt_tokens_total 40.0",
        'pdserve_router_decisions_total{decision="disaggregated"} 2.0',
        'pdserve_router_decisions_total{decision="decode_only"} 1.0',
        'pdserve_router_ready_workers{role="decode"} 0.0',
        "pdserve_router_routing_decisions_total"
        '{kind="disaggregated",reason="uncached_prefill"} 1.0',
        'pdserve_router_routing_decisions_total{kind="decode_only",reason="short_uncached"} 1.0',
        "pdserve_router_index_prompt_tokens_total 400.0",
        "pdserve_router_index_hit_tokens_total 256.0",
        'pdserve_router_index_lookup_seconds_bucket{le="0.00025"} 0.0',
        'pdserve_router_index_lookup_seconds_bucket{le="0.0005"} 1.0',
        'pdserve_router_index_lookup_seconds_bucket{le="+Inf"} 1.0',
        "pdserve_router_index_lookup_seconds_count 1.0",
        "pdserve_router_index_lookup_failures_total 1.0",
    ):
        assert line in text.splitlines(), line


async def test_a_client_that_goes_away_closes_the_core_stream(served: Any) -> None:
    core, client = served
    core.hold.clear()  # the script stalls after its first piece
    answer = await client.post("/v1/completions", json={"prompt": "Hi", "stream": True})
    first = await answer.content.readuntil(b"\n\n")
    assert b'"text":"Hel"' in first
    answer.close()
    await asyncio.wait_for(core.closed.wait(), timeout=10)


async def test_http_server_binds_serves_and_stops() -> None:
    core = ScriptedCore()
    server = HttpServer(core, host="127.0.0.1", port=0)  # type: ignore[arg-type]
    port = await server.start()
    assert port > 0 and server.port == port
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/v1/models") as answer:
                assert answer.status == 200
                assert (await answer.json())["data"][0]["id"] == "tiny"
    finally:
        await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{port}/v1/models")

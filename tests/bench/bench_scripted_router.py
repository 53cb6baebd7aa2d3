"""A real gRPC ``Generation`` server with a scripted token schedule, for the benchmark's tests.

The server runs on its own event loop in a background thread, so that both async tests and the
synchronous ``pdserve bench`` command can drive it over loopback. Its behaviour is chosen by the
request's ``model`` field, ``mode:tag`` (the tag only keeps tests apart):

- ``ok``: the first token FIRST_TOKEN_S after the request arrives, then one token every
  TOKEN_GAP_S (on absolute deadlines, so no drift), then a final message with finish reason,
  usage and timing only. Token ``i`` is ``OUTPUT_BASE_ID + i`` with text ``"t{i} "``.
- ``exhausted``: aborts at once with RESOURCE_EXHAUSTED.
- ``abort-after-2``: sends two tokens, then aborts with UNAVAILABLE.
- ``stall``: sleeps for ten seconds before anything.
- ``no-finish``: sends the tokens but no final message.
- ``fail-long-N``: like ``ok``, but aborts with RESOURCE_EXHAUSTED when the prompt has more than
  N token ids.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import grpc
import grpc.aio

from pdserve.v1 import generation_pb2, generation_pb2_grpc

FIRST_TOKEN_S = 0.1
TOKEN_GAP_S = 0.05
OUTPUT_BASE_ID = 1000


@dataclass
class Received:
    """What the server saw of one request."""

    request: generation_pb2.GenerateRequest
    arrived_s: float


@dataclass
class ScriptedGeneration(generation_pb2_grpc.GenerationServicer):
    """The scripted servicer (module doc)."""

    received: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    max_in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    async def Generate(self, request, context):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.received[request.model].append(Received(request, start))
        self.in_flight[request.model] += 1
        self.max_in_flight[request.model] = max(self.max_in_flight[request.model],
                                                self.in_flight[request.model])
        try:
            async for msg in self._script(request, context, start):
                yield msg
        finally:
            self.in_flight[request.model] -= 1

    async def _script(self, request, context, start):  # type: ignore[no-untyped-def]
        mode = request.model.partition(":")[0]
        num_prompt = len(request.token_ids.ids) or len(request.prompt.split())
        if mode == "exhausted":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "no decode capacity left")
        if mode.startswith("fail-long-") and num_prompt > int(mode.removeprefix("fail-long-")):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "prompt too long for KV")
        if mode == "stall":
            await asyncio.sleep(10)
        loop = asyncio.get_running_loop()
        num_tokens = request.sampling.max_tokens
        for i in range(num_tokens):
            if mode == "abort-after-2" and i == 2:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "decode worker died")
            await asyncio.sleep(max(0.0, start + FIRST_TOKEN_S + i * TOKEN_GAP_S - loop.time()))
            yield generation_pb2.GenerateResponse(
                request_id=request.request_id, text=f"t{i} ", token_ids=[OUTPUT_BASE_ID + i])
        if mode == "no-finish":
            return
        yield generation_pb2.GenerateResponse(
            request_id=request.request_id,
            finish_reason=generation_pb2.FINISH_REASON_LENGTH,
            usage=generation_pb2.Usage(prompt_tokens=num_prompt, completion_tokens=num_tokens,
                                       cached_prompt_tokens=0),
            timing=generation_pb2.RequestTiming(ttft_s=FIRST_TOKEN_S, e2e_s=loop.time() - start,
                                                decode_worker="decode-0"),
        )


class ScriptedRouter:
    """A gRPC server with :class:`ScriptedGeneration`, on a loop of its own thread."""

    def __init__(self) -> None:
        self.servicer = ScriptedGeneration()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        generation_pb2_grpc.add_GenerationServicer_to_server(self.servicer, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(None), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

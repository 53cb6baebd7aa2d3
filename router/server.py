"""The router's public gRPC service, ``pdserve.v1.Generation``, and the router process.

The servicer validates each request (naming the bad field), tokenizes it once, applies the
concurrency limit, and streams the dispatcher's chunks back, ending with usage and timing. Errors
become gRPC statuses here and only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis

from pdserve.config import PdserveConfig, redis_password
from pdserve.errors import (
    InvalidRequest,
    Overloaded,
    PdserveError,
    RequestDeadlineExceeded,
    WorkerFailed,
)
from pdserve.index import RedisIndex
from pdserve.models import resolve_model_path
from pdserve.planner.signals import RequestRecord
from pdserve.registry import Registry
from pdserve.sampling import Sampling, check_sampling
from pdserve.serving import abort_with, make_server, set_serving
from pdserve.v1 import generation_pb2, generation_pb2_grpc
from pdserve.validation import check_request_id
from router.dispatch import Dispatcher, RequestState
from router.http import HttpServer
from router.index_sweeper import IndexSweeper
from router.policy import RoutingStats
from router.request_log import RequestLog
from router.selection import CacheAwareSelector, RoundRobinSelector, Selector
from router.tokenizer import PromptTokenizer
from router.workers import WorkerView

logger = logging.getLogger(__name__)

SERVICE_NAME = "pdserve.v1.Generation"
MAX_PROMPT_CHARS = 1_000_000
MAX_CHAT_MESSAGES = 1024


@dataclass
class RouterStats:
    """Counters of one router process."""

    num_requests: int = 0
    num_ok: int = 0
    num_failed: int = 0
    num_disaggregated: int = 0
    num_decode_only: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0


class GenerationServicer(generation_pb2_grpc.GenerationServicer):
    """Validates, tokenizes, limits and relays."""

    def __init__(
        self,
        config: PdserveConfig,
        tokenizer: PromptTokenizer,
        view: WorkerView,
        dispatcher: Dispatcher,
        max_model_len: int,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.view = view
        self.dispatcher = dispatcher
        self.max_model_len = max_model_len
        self.num_inflight = 0
        self.stats = RouterStats()
        self.routing_stats = RoutingStats()
        """Routing decisions and prefix-index lookups (filled by the cache-aware selector)."""
        self.request_log: RequestLog | None = None
        """Where finished requests are recorded for the planner (None: not recorded)."""

    # -- validation -------------------------------------------------------------------------

    def _prepare(
        self, request: generation_pb2.GenerateRequest, request_id: str
    ) -> tuple[list[int], Sampling]:
        model_name = self.config.model.name
        if request.model and request.model != model_name:
            raise InvalidRequest(
                f"model {request.model!r} is not served here; this router serves {model_name!r}",
                request_id=request_id,
            )
        kind = request.WhichOneof("input")
        if kind is None:
            raise InvalidRequest(
                "the request has no input: set one of prompt, token_ids or chat",
                request_id=request_id,
            )
        if kind == "prompt":
            if not request.prompt:
                raise InvalidRequest("prompt must not be empty", request_id=request_id)
            if len(request.prompt) > MAX_PROMPT_CHARS:
                raise InvalidRequest(
                    f"prompt has {len(request.prompt)} characters; at most {MAX_PROMPT_CHARS}",
                    request_id=request_id,
                )
            ids = self.tokenizer.encode(request.prompt)
            field_name = "prompt"
        elif kind == "token_ids":
            ids = list(request.token_ids.ids)
            field_name = "token_ids.ids"
            if not ids:
                raise InvalidRequest("token_ids.ids must not be empty", request_id=request_id)
            bad = next((t for t in ids if t >= self.tokenizer.vocab_size), None)
            if bad is not None:
                raise InvalidRequest(
                    f"token_ids.ids contains {bad}, outside the vocabulary "
                    f"(0..{self.tokenizer.vocab_size - 1})",
                    request_id=request_id,
                )
        else:
            messages = request.chat.messages
            if len(messages) > MAX_CHAT_MESSAGES:
                raise InvalidRequest(
                    f"chat.messages has {len(messages)} messages; at most {MAX_CHAT_MESSAGES}",
                    request_id=request_id,
                )
            if sum(len(m.content) for m in messages) > MAX_PROMPT_CHARS:
                raise InvalidRequest(
                    f"chat.messages hold more than {MAX_PROMPT_CHARS} characters",
                    request_id=request_id,
                )
            ids = self.tokenizer.encode_chat(
                [(m.role, m.content) for m in messages], request_id=request_id
            )
            field_name = "chat.messages"
        if not ids:
            raise InvalidRequest(f"{field_name} encodes to no tokens", request_id=request_id)
        if len(ids) >= self.max_model_len:
            raise InvalidRequest(
                f"{field_name} is {len(ids)} tokens long; the model's context is "
                f"{self.max_model_len} tokens, so a prompt can have at most "
                f"{self.max_model_len - 1}",
                request_id=request_id,
            )
        sampling = check_sampling(
            request.sampling,
            default_max_tokens=self.config.router.default_max_tokens,
            vocab_size=self.tokenizer.vocab_size,
            request_id=request_id,
        )
        # Generation cannot run past the context; cap the budget there.
        room = self.max_model_len - len(ids)
        if sampling.max_tokens > room:
            sampling = _replace(sampling, max_tokens=room)
        if sampling.temperature > 0 and sampling.seed is None:
            # Prefill and decode both draw the first token: one seed makes them draw the same.
            sampling = _replace(sampling, seed=random.getrandbits(63))
        return ids, sampling

    # -- the RPCs ---------------------------------------------------------------------------

    async def stream(
        self, request: generation_pb2.GenerateRequest, *, timeout_s: float | None = None
    ) -> AsyncGenerator[generation_pb2.GenerateResponse, None]:
        """Runs one request and yields its responses; the front doors (gRPC, HTTP) call this.

        Raises :class:`~pdserve.errors.PdserveError` subclasses, never gRPC errors: the caller
        maps them to its own status codes. ``timeout_s`` is the client's deadline (``None``:
        the configured default, which also caps it). Closing the iterator early cancels the
        request in every worker that holds it.
        """
        received = time.monotonic()
        request_id = request.request_id or uuid.uuid4().hex
        self.stats.num_requests += 1
        try:
            check_request_id(request.request_id, required=False)
            ids, sampling = self._prepare(request, request_id)
            if self.num_inflight >= self.config.router.max_concurrent_requests:
                raise Overloaded(
                    f"the router has {self.num_inflight} requests in flight (limit "
                    f"{self.config.router.max_concurrent_requests}); retry in a few seconds",
                    request_id=request_id,
                )
        except PdserveError:
            self.stats.num_failed += 1
            raise
        timeout = self.config.router.request_timeout_s
        if timeout_s is not None:
            timeout = min(timeout, timeout_s)
        state = RequestState(
            # Workers see a router-made id: a client's id need not be unique, and the
            # suffixes of internal calls must stay within the workers' id limit.
            request_id=f"{request_id[:64]}-{uuid.uuid4().hex[:12]}",
            prompt_ids=ids,
            sampling=sampling,
            model=self.config.model.name,
            deadline=received + timeout,
        )
        self.num_inflight += 1
        first_at = 0.0
        ok = False
        try:
            async with (
                asyncio.timeout(timeout),
                contextlib.aclosing(self.dispatcher.run(state)) as chunks,
            ):
                async for chunk in chunks:
                    if not first_at and chunk.token_ids:
                        first_at = time.monotonic()
                    response = generation_pb2.GenerateResponse(
                        request_id=request_id, text=chunk.text, token_ids=chunk.token_ids
                    )
                    if chunk.finish_reason:
                        response.finish_reason = chunk.finish_reason  # type: ignore[assignment]
                        response.stop_reason = chunk.stop_reason
                        self._finish(response, state, received, first_at)
                    yield response
            ok = True
        except TimeoutError:
            raise RequestDeadlineExceeded(
                f"the request did not finish within {timeout:.1f} s; "
                f"{len(state.emitted)} tokens were delivered",
                request_id=request_id,
            ) from None
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise RequestDeadlineExceeded(
                    f"the request did not finish within {timeout:.1f} s; "
                    f"{len(state.emitted)} tokens were delivered",
                    request_id=request_id,
                ) from exc
            raise WorkerFailed(
                f"a worker answered {code.name}: {exc.details()}", request_id=request_id
            ) from exc
        finally:
            self.num_inflight -= 1
            if ok:
                self.stats.num_ok += 1
            else:
                self.stats.num_failed += 1
            if self.request_log is not None:
                self.request_log.record(_record(state, received, first_at, ok))

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        try:
            responses = self.stream(request, timeout_s=context.time_remaining())
            async with contextlib.aclosing(responses):
                async for response in responses:
                    yield response
        except PdserveError as exc:
            if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED and not isinstance(
                exc, InvalidRequest
            ):
                logger.warning("%s", exc)
            await abort_with(context, exc)

    def _finish(
        self,
        response: generation_pb2.GenerateResponse,
        state: RequestState,
        received: float,
        first_at: float,
    ) -> None:
        now = time.monotonic()
        response.usage.prompt_tokens = len(state.prompt_ids)
        response.usage.completion_tokens = len(state.emitted)
        response.usage.cached_prompt_tokens = state.cached_prompt_tokens
        response.timing.ttft_s = (first_at or now) - received
        response.timing.e2e_s = now - received
        response.timing.prefill_s = state.prefill_s
        response.timing.disaggregated = state.disaggregated
        response.timing.prefill_worker = state.prefill_worker
        response.timing.decode_worker = state.decode_worker
        stats = self.stats
        stats.prompt_tokens += len(state.prompt_ids)
        stats.cached_prompt_tokens += state.cached_prompt_tokens
        if state.disaggregated:
            stats.num_disaggregated += 1
        else:
            stats.num_decode_only += 1

    async def ListModels(
        self, request: generation_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListModelsResponse:
        name = self.config.model.name
        return generation_pb2.ListModelsResponse(
            models=[
                generation_pb2.ModelInfo(
                    name=name,
                    max_model_len=self.max_model_len,
                    num_prefill_workers=len(self.view.ready("prefill", name)),
                    num_decode_workers=len(self.view.ready("decode", name)),
                )
            ]
        )


def _record(state: RequestState, received: float, first_at: float, ok: bool) -> RequestRecord:
    """The planner's record of a finished request."""
    now = time.monotonic()
    num_tokens = len(state.emitted)
    ttft = (first_at - received) if first_at else now - received
    itl = (now - first_at) / (num_tokens - 1) if first_at and num_tokens > 1 else 0.0
    return RequestRecord(
        t=time.time() - (now - received),
        prompt_tokens=len(state.prompt_ids),
        output_tokens=num_tokens,
        ttft_s=ttft,
        itl_s=itl,
        ok=ok,
    )


def _replace(sampling: Sampling, **changes: object) -> Sampling:
    import dataclasses

    return dataclasses.replace(sampling, **changes)  # type: ignore[arg-type]


class RouterProcess:
    """The router's servers and background tasks."""

    def __init__(self, config: PdserveConfig) -> None:
        self.config = config
        self.server: grpc.aio.Server | None = None
        self.redis: aioredis.Redis | None = None
        self.view: WorkerView | None = None
        self.servicer: GenerationServicer | None = None
        self.sweeper: IndexSweeper | None = None
        self.request_log: RequestLog | None = None
        self.routing_stats = RoutingStats()
        """Routing decisions and index lookups (cache-aware policy only)."""
        self.port = config.router.grpc_port
        # -- OpenAI-compatible HTTP front door (router/http) --
        self.http: HttpServer | None = None
        self.http_port = 0
        """The bound HTTP port once started; 0 when ``router.http_port`` is 0 (disabled)."""

    async def start(self) -> None:
        config = self.config
        if not config.redis.url:
            raise ValueError("the router needs redis.url (or PDSERVE_REDIS_URL)")
        model_dir = resolve_model_path(config.model.path)
        tokenizer = await asyncio.to_thread(PromptTokenizer, model_dir)
        self.redis = aioredis.from_url(
            config.redis.url,
            password=redis_password(),
            decode_responses=True,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
        )
        self.view = WorkerView(
            Registry(self.redis, ttl_s=config.redis.ttl_s),
            max_message_bytes=config.router.max_message_bytes,
        )
        await self.view.start()
        routing = config.router.routing
        selector: Selector
        if routing.policy == "round_robin":
            selector = RoundRobinSelector(self.view)
        else:
            index = RedisIndex(self.redis)
            self.routing_stats = RoutingStats()
            selector = CacheAwareSelector(self.view, index, routing, self.routing_stats)
            self.sweeper = IndexSweeper(index, self.view.registry, interval_s=routing.index_sweep_s)
            await self.sweeper.start()
        dispatcher = Dispatcher(self.view, selector)
        self.servicer = GenerationServicer(
            config, tokenizer, self.view, dispatcher, config.model.max_model_len
        )
        self.servicer.routing_stats = self.routing_stats
        self.request_log = RequestLog(self.redis)
        await self.request_log.start()
        self.servicer.request_log = self.request_log
        server, health = make_server(
            [SERVICE_NAME], max_message_bytes=config.router.max_message_bytes
        )
        generation_pb2_grpc.add_GenerationServicer_to_server(self.servicer, server)
        self.port = server.add_insecure_port(f"{config.router.host}:{config.router.grpc_port}")
        if self.port == 0:
            raise OSError(f"cannot bind the router's gRPC port {config.router.grpc_port}")
        await server.start()
        await set_serving(health, [SERVICE_NAME])
        self.server = server
        logger.info("router serving pdserve.v1.Generation on port %d", self.port)
        # -- OpenAI-compatible HTTP front door (router/http) --
        if config.router.http_port:
            self.http = HttpServer(
                self.servicer, host=config.router.host, port=config.router.http_port
            )
            self.http_port = await self.http.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        # -- OpenAI-compatible HTTP front door (router/http) --
        if self.http is not None:
            await self.http.stop()
        if self.server is not None:
            await self.server.stop(grace=grace_s)
        if self.sweeper is not None:
            await self.sweeper.stop()
        if self.request_log is not None:
            await self.request_log.stop()
        if self.view is not None:
            await self.view.stop()
        if self.redis is not None:
            await self.redis.aclose()


__all__ = ["GenerationServicer", "RouterProcess", "check_request_id"]

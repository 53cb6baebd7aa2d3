"""The aiohttp application of the OpenAI-compatible front door, and its server.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /health`` (200 when a decode worker of the served model is ready, else 503) and
``GET /metrics``. Every request runs through the same core as the gRPC API
(:meth:`router.server.GenerationServicer.stream`); every error leaves in the OpenAI error shape.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pdserve.errors import InvalidRequest
from pdserve.validation import check_request_id
from router.http.chat import ChatShapes, chat_request
from router.http.completions import CompletionShapes, completion_request
from router.http.errors import ApiError, bad_request, from_pdserve_error, model_not_found
from router.http.metrics import CONTENT_TYPE, RouterMetrics
from router.http.relay import dumps, error_response, relay

if TYPE_CHECKING:
    from router.server import GenerationServicer

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OpenAIApi:
    """The route handlers, bound to one router core."""

    def __init__(self, servicer: GenerationServicer) -> None:
        self.servicer = servicer
        self.metrics = RouterMetrics(servicer)
        self.created = int(time.time())

    @property
    def model_name(self) -> str:
        return self.servicer.config.model.name

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat_completions),
            web.get("/v1/models", self.models),
            web.get("/health", self.health),
            web.get("/metrics", self.prometheus),
        ]

    # -- generation -------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body, request_id = await self._open(request)
        generate, mode = completion_request(body, request_id=request_id)
        shapes = CompletionShapes(request_id, self.model_name, int(time.time()))
        return await relay(
            request, self.servicer.stream(generate), mode, shapes, request_id=request_id
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body, request_id = await self._open(request)
        generate, mode = chat_request(
            body, request_id=request_id, max_model_len=self.servicer.max_model_len
        )
        shapes = ChatShapes(request_id, self.model_name, int(time.time()))
        opening = shapes.role_chunk(include_usage=mode.include_usage) if mode.stream else None
        return await relay(
            request,
            self.servicer.stream(generate),
            mode,
            shapes,
            request_id=request_id,
            opening=opening,
        )

    async def _open(self, request: web.Request) -> tuple[Mapping[str, Any], str]:
        """The JSON body (an object) and the request id; checks the model name."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise ApiError(
                413,
                f"the body is larger than {request.client_max_size} bytes",
                "invalid_request_error",
                None,
                "request_too_large",
            ) from exc
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad_request(f"the body is not valid JSON: {exc}", code="invalid_json") from exc
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object", code="invalid_json")
        request_id = request.headers.get("X-Request-Id") or body.get("request_id") or ""
        if not isinstance(request_id, str):
            raise bad_request("request_id must be a string", param="request_id")
        try:
            check_request_id(request_id, required=False)
        except InvalidRequest as exc:
            raise bad_request(str(exc), param="request_id") from exc
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise bad_request("model must be a string", param="model")
        if model and model != self.model_name:
            raise model_not_found(model, self.model_name)
        return body, request_id or uuid.uuid4().hex

    # -- information ------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "pdserve",
            "root": self.model_name,
            "parent": None,
            "max_model_len": self.servicer.max_model_len,
        }
        return web.json_response({"object": "list", "data": [card]}, dumps=dumps)

    async def health(self, request: web.Request) -> web.Response:
        view = self.servicer.view
        counts = {role: len(view.ready(role, self.model_name)) for role in ("prefill", "decode")}
        ready = counts["decode"] > 0
        return web.json_response(
            {"status": "ok" if ready else "unavailable", "ready_workers": counts},
            status=200 if ready else 503,
            dumps=dumps,
        )

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers every error, including aiohttp's own (404, 405, 413), in the OpenAI shape."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
        message = f"{request.method} {request.path}: {exc.reason}"
        return error_response(ApiError(exc.status, message, kind, None, code))
    except InvalidRequest as exc:
        return error_response(from_pdserve_error(exc))


def build_app(servicer: GenerationServicer, *, client_max_size: int = 16 << 20) -> web.Application:
    """The aiohttp application serving the OpenAI-compatible API of ``servicer``."""
    app = web.Application(middlewares=[openai_errors], client_max_size=client_max_size)
    app.add_routes(OpenAIApi(servicer).routes())
    return app


class HttpServer:
    """The HTTP front door: binds, serves, stops. A handler whose client disconnects is
    cancelled, which cancels its request in the workers."""

    def __init__(self, servicer: GenerationServicer, *, host: str, port: int) -> None:
        self.servicer = servicer
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Starts serving; returns the bound port (useful when ``port`` is 0)."""
        app = build_app(
            self.servicer, client_max_size=self.servicer.config.router.max_message_bytes
        )
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        logger.info("router serving the OpenAI-compatible HTTP API on port %d", self.port)
        return self.port

    async def stop(self) -> None:
        """Stops accepting connections and closes the open ones."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

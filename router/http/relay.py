"""Runs one request through the router core and answers it as JSON or as server-sent events.

The first response is awaited before anything is sent, so every error found before the first
token (bad field, overload, no worker, ...) gets its own HTTP status. An error after the stream
has started is sent as a last ``data: {"error": ...}`` event, then ``data: [DONE]``, as vLLM
does. The core's stream is always closed on the way out: when the client goes away (the handler
is cancelled, or a write fails) the request is cancelled in every worker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from aiohttp import web

from pdserve.errors import PdserveError
from pdserve.v1 import generation_pb2
from router.http.errors import ApiError, from_pdserve_error
from router.http.params import StreamMode

logger = logging.getLogger(__name__)

Responses = AsyncIterator[generation_pb2.GenerateResponse]


class Shapes(Protocol):
    """The JSON objects of one endpoint's answers (see ``completions`` and ``chat``)."""

    def chunk(
        self, text: str, last: generation_pb2.GenerateResponse | None, *, include_usage: bool
    ) -> dict[str, Any]: ...

    def usage_chunk(self, last: generation_pb2.GenerateResponse) -> dict[str, Any]: ...

    def whole(self, text: str, last: generation_pb2.GenerateResponse) -> dict[str, Any]: ...


def dumps(obj: Any) -> str:
    """Compact JSON, UTF-8 kept as is."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def error_response(error: ApiError, request_id: str = "") -> web.Response:
    """The OpenAI-shaped JSON answer of ``error``."""
    headers = error.headers()
    if request_id:
        headers["X-Request-Id"] = request_id
    return web.Response(
        status=error.status,
        text=dumps(error.body()),
        content_type="application/json",
        headers=headers,
    )


async def relay(
    http_request: web.Request,
    responses: Responses,
    mode: StreamMode,
    shapes: Shapes,
    *,
    request_id: str,
    opening: dict[str, Any] | None = None,
) -> web.StreamResponse:
    """Answers ``http_request`` from the core's ``responses`` (``opening``: a first SSE chunk,
    the chat role chunk)."""
    try:
        return await _answer(http_request, responses, mode, shapes, request_id, opening)
    finally:
        # Closing the core's generator cancels the request wherever it still runs.
        aclose = getattr(responses, "aclose", None)
        if aclose is not None:
            await aclose()


async def _answer(
    http_request: web.Request,
    responses: Responses,
    mode: StreamMode,
    shapes: Shapes,
    request_id: str,
    opening: dict[str, Any] | None,
) -> web.StreamResponse:
    try:
        first = await anext(responses)
    except PdserveError as exc:
        _log(exc)
        return error_response(from_pdserve_error(exc), request_id)
    except StopAsyncIteration:
        return error_response(
            ApiError(
                500,
                f"[{request_id}] the request ended without a response",
                "internal_error",
                None,
                "internal_error",
            ),
            request_id,
        )
    if mode.stream:
        return await _stream(http_request, first, responses, mode, shapes, request_id, opening)
    text = [first.text]
    last = first
    try:
        while not last.finish_reason:
            last = await anext(responses)
            text.append(last.text)
    except PdserveError as exc:
        _log(exc)
        return error_response(from_pdserve_error(exc), request_id)
    except StopAsyncIteration:
        pass
    return web.Response(
        text=dumps(shapes.whole("".join(text), last)),
        content_type="application/json",
        headers={"X-Request-Id": request_id},
    )


async def _stream(
    http_request: web.Request,
    first: generation_pb2.GenerateResponse,
    responses: Responses,
    mode: StreamMode,
    shapes: Shapes,
    request_id: str,
    opening: dict[str, Any] | None,
) -> web.StreamResponse:
    answer = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Request-Id": request_id,
        }
    )
    await answer.prepare(http_request)

    async def send(obj: Any) -> None:
        await answer.write(f"data: {dumps(obj)}\n\n".encode())

    try:
        if opening is not None:
            await send(opening)
        response: generation_pb2.GenerateResponse | None = first
        last = None
        while response is not None:
            if response.finish_reason:
                last = response
                await send(shapes.chunk(response.text, response, include_usage=mode.include_usage))
                break
            if response.text:
                await send(shapes.chunk(response.text, None, include_usage=mode.include_usage))
            response = await anext(responses, None)
        if mode.include_usage and last is not None:
            await send(shapes.usage_chunk(last))
    except PdserveError as exc:
        _log(exc)
        try:
            await send(from_pdserve_error(exc).body())
        except ConnectionResetError:
            return answer
    except ConnectionResetError:
        logger.info("[%s] the client went away; cancelling the request", request_id)
        return answer
    try:
        await answer.write(b"data: [DONE]\n\n")
        await answer.write_eof()
    except ConnectionResetError:
        logger.info("[%s] the client went away before the end of the stream", request_id)
    return answer


def _log(exc: PdserveError) -> None:
    if from_pdserve_error(exc).status >= 500:
        logger.warning("%s", exc)
    else:
        logger.info("%s", exc)

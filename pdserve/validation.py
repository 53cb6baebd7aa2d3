"""Checks of the token-level requests that workers receive (the router checks its own input
before it tokenizes), and the interceptor that answers request bytes that do not parse."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from pdserve.errors import InvalidRequest

MAX_REQUEST_ID_CHARS = 128


def check_request_id(request_id: str, *, required: bool) -> None:
    if not request_id:
        if required:
            raise InvalidRequest("request_id must not be empty")
        return
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        raise InvalidRequest(
            f"request_id must be at most {MAX_REQUEST_ID_CHARS} printable characters, got "
            f"{request_id[:40]!r} ({len(request_id)} characters)"
        )
    if not request_id.isascii():
        raise InvalidRequest(f"request_id must be ASCII, got {request_id[:40]!r}")


def check_prompt_tokens(
    token_ids: Sequence[int],
    *,
    vocab_size: int,
    max_model_len: int,
    request_id: str = "",
    field: str = "prompt_token_ids",
) -> None:
    """The prompt must be non-empty, within the vocabulary, and leave room for one token."""
    if not token_ids:
        raise InvalidRequest(f"{field} must not be empty", request_id=request_id)
    if len(token_ids) >= max_model_len:
        raise InvalidRequest(
            f"{field} has {len(token_ids)} tokens; the model's context is {max_model_len} "
            f"tokens, so a prompt can have at most {max_model_len - 1}",
            request_id=request_id,
        )
    bad = next((t for t in token_ids if t >= vocab_size), None)
    if bad is not None:
        raise InvalidRequest(
            f"{field} contains token id {bad}, outside the vocabulary (0..{vocab_size - 1})",
            request_id=request_id,
        )


class _Undecodable:
    """Stands in for a request message whose bytes do not parse."""

    def __init__(self, method: str, error: str) -> None:
        self.method = method
        self.error = error

    def message(self) -> str:
        return (
            f"the request to {self.method} is not a valid protobuf message ({self.error}); "
            "check that the client uses the pdserve.v1 protos and sends UTF-8 text"
        )


class UndecodableRequestInterceptor(grpc.aio.ServerInterceptor):
    """Answers requests whose bytes do not parse (corrupt wire format, text that is not
    UTF-8) with ``INVALID_ARGUMENT`` and a message naming the method, instead of gRPC's
    default ``UNKNOWN`` "Unexpected DecodeError". Covers unary and server-streaming methods."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method = str(handler_call_details.method)
        parse = handler.request_deserializer

        def deserialize(raw: bytes) -> Any:
            try:
                return parse(raw)
            except DecodeError as exc:
                return _Undecodable(method, str(exc))

        if handler.response_streaming:
            stream = handler.unary_stream

            async def stream_behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message())
                async for response in stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                stream_behavior,
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        unary = handler.unary_unary

        async def unary_behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message())
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_behavior,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )

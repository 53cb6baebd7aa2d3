"""The checks every gRPC edge applies before a request reaches an engine (no engine needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from pdserve.errors import InvalidRequest
from pdserve.serving import make_server
from pdserve.v1 import generation_pb2, generation_pb2_grpc
from pdserve.validation import check_prompt_tokens, check_request_id


class _Echo(generation_pb2_grpc.GenerationServicer):
    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        yield generation_pb2.GenerateResponse(text=request.prompt)

    async def ListModels(
        self, request: generation_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListModelsResponse:
        return generation_pb2.ListModelsResponse()


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"\x12\x02\xff\xfe", "UTF-8"),  # prompt that is not UTF-8
        (b"\xff\xff\xff", "corrupt"),  # not a message at all
    ],
)
async def test_undecodable_request_bytes_get_invalid_argument(raw: bytes, needle: str) -> None:
    server, _ = make_server(["pdserve.v1.Generation"])
    generation_pb2_grpc.add_GenerationServicer_to_server(_Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in channel.unary_stream("/pdserve.v1.Generation/Generate")(raw):
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Generate" in (info.value.details() or "")
            assert needle in (info.value.details() or "")
            # Unary methods too (an empty message type: only corrupt bytes fail to parse).
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/pdserve.v1.Generation/ListModels")(b"\xff\xff")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "ListModels" in (info.value.details() or "")
            # Well-formed requests pass through the interceptor unchanged.
            stub = generation_pb2_grpc.GenerationStub(channel)
            answers = [m async for m in stub.Generate(generation_pb2.GenerateRequest(prompt="hi"))]
            assert [m.text for m in answers] == ["hi"]
    finally:
        await server.stop(0)


def test_prompt_token_checks_name_the_problem() -> None:
    with pytest.raises(InvalidRequest, match="must not be empty"):
        check_prompt_tokens([], vocab_size=10, max_model_len=8)
    with pytest.raises(InvalidRequest, match="at most 7"):
        check_prompt_tokens([1] * 8, vocab_size=10, max_model_len=8)
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        check_prompt_tokens([1, 10], vocab_size=10, max_model_len=8)
    check_prompt_tokens([0, 9], vocab_size=10, max_model_len=8)


def test_request_id_checks() -> None:
    check_request_id("", required=False)
    with pytest.raises(InvalidRequest, match="must not be empty"):
        check_request_id("", required=True)
    with pytest.raises(InvalidRequest, match="printable"):
        check_request_id("a\x00b", required=True)
    with pytest.raises(InvalidRequest, match="ASCII"):
        check_request_id("é", required=True)
    with pytest.raises(InvalidRequest, match="at most 128"):
        check_request_id("r" * 129, required=True)

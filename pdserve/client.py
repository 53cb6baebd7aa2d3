"""Python clients of a pdserve router (``pdserve.v1.Generation``).

    client = Client("localhost:50051")
    for piece in client.generate(prompt="Hello", max_tokens=8, temperature=0):
        print(piece.text, end="")

:class:`AsyncClient` is the same over ``grpc.aio``. Both yield the raw ``GenerateResponse``
messages; the last one carries ``finish_reason``, ``usage`` and ``timing``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc

from pdserve.serving import channel_options
from pdserve.v1 import generation_pb2, generation_pb2_grpc

__all__ = ["AsyncClient", "Client", "build_request"]

_SAMPLING_FIELDS = tuple(f.name for f in generation_pb2.SamplingParams.DESCRIPTOR.fields)


def build_request(
    *,
    prompt: str | None = None,
    token_ids: Sequence[int] | None = None,
    chat: Sequence[tuple[str, str]] | None = None,
    model: str = "",
    request_id: str = "",
    **sampling: Any,
) -> generation_pb2.GenerateRequest:
    """A ``GenerateRequest`` from exactly one of ``prompt``, ``token_ids`` or ``chat``
    (``(role, content)`` pairs) and sampling keywords (max_tokens, temperature, top_p, top_k,
    seed, stop, stop_token_ids, ignore_eos)."""
    given = [x is not None for x in (prompt, token_ids, chat)]
    if sum(given) != 1:
        raise ValueError("pass exactly one of prompt, token_ids or chat")
    unknown = sorted(set(sampling) - set(_SAMPLING_FIELDS))
    if unknown:
        raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
    request = generation_pb2.GenerateRequest(model=model, request_id=request_id)
    if prompt is not None:
        request.prompt = prompt
    elif token_ids is not None:
        request.token_ids.ids.extend(token_ids)
    else:
        assert chat is not None
        for role, content in chat:
            request.chat.messages.add(role=role, content=content)
    for name, value in sampling.items():
        if value is None:
            continue
        if name in ("stop", "stop_token_ids"):
            getattr(request.sampling, name).extend(value)
        else:
            setattr(request.sampling, name, value)
    return request


class Client:
    """Blocking client."""

    def __init__(self, address: str = "localhost:50051", *, max_message_bytes: int = 16 << 20):
        self.channel = grpc.insecure_channel(address, options=channel_options(max_message_bytes))
        self.stub = generation_pb2_grpc.GenerationStub(self.channel)

    def generate(
        self, *, timeout: float | None = None, **kwargs: Any
    ) -> Iterator[generation_pb2.GenerateResponse]:
        """Streams a completion (see :func:`build_request` for the arguments)."""
        request = build_request(**kwargs)
        yield from self.stub.Generate(request, timeout=timeout)

    def complete(self, **kwargs: Any) -> tuple[str, list[int], generation_pb2.GenerateResponse]:
        """The whole completion: text, token ids and the last message."""
        text: list[str] = []
        ids: list[int] = []
        last = generation_pb2.GenerateResponse()
        for piece in self.generate(**kwargs):
            text.append(piece.text)
            ids.extend(piece.token_ids)
            last = piece
        return "".join(text), ids, last

    def models(self) -> generation_pb2.ListModelsResponse:
        return self.stub.ListModels(generation_pb2.ListModelsRequest())

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client."""

    def __init__(self, address: str = "localhost:50051", *, max_message_bytes: int = 16 << 20):
        self.channel = grpc.aio.insecure_channel(
            address, options=channel_options(max_message_bytes)
        )
        self.stub = generation_pb2_grpc.GenerationStub(self.channel)

    async def generate(
        self, *, timeout: float | None = None, **kwargs: Any
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        request = build_request(**kwargs)
        call = self.stub.Generate(request, timeout=timeout)
        try:
            async for piece in call:
                yield piece
        finally:
            call.cancel()

    async def complete(
        self, **kwargs: Any
    ) -> tuple[str, list[int], generation_pb2.GenerateResponse]:
        text: list[str] = []
        ids: list[int] = []
        last = generation_pb2.GenerateResponse()
        async for piece in self.generate(**kwargs):
            text.append(piece.text)
            ids.extend(piece.token_ids)
            last = piece
        return "".join(text), ids, last

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

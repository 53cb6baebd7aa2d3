"""Pieces of the OpenAI response objects common to both endpoints."""

from __future__ import annotations

from typing import Any, ClassVar

from pdserve.v1 import generation_pb2

_FINISH = {
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
}


def finish_reason(last: generation_pb2.GenerateResponse) -> str | None:
    """``"stop"`` or ``"length"`` (``None`` if the response is not the last one)."""
    return _FINISH.get(last.finish_reason)


def stop_reason(last: generation_pb2.GenerateResponse) -> str | None:
    """The stop string or stop token id that ended the request (vLLM's ``stop_reason``)."""
    return last.stop_reason or None


def usage(last: generation_pb2.GenerateResponse) -> dict[str, Any]:
    """OpenAI usage, with the reused prompt tokens as ``prompt_tokens_details.cached_tokens``."""
    prompt = last.usage.prompt_tokens
    completion = last.usage.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": last.usage.cached_prompt_tokens},
    }


class ResponseShapes:
    """The JSON objects of one answer: streamed chunks, the usage chunk, the whole answer.

    An endpoint names its objects and says where the text goes in a streamed choice
    (:meth:`_streamed`) and in the whole answer's choice (:meth:`_answered`).
    """

    id_prefix: ClassVar[str]
    chunk_object: ClassVar[str]
    whole_object: ClassVar[str]

    def __init__(self, request_id: str, model: str, created: int) -> None:
        self.id = f"{self.id_prefix}-{request_id}"
        self.model = model
        self.created = created

    def _streamed(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def _answered(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    @staticmethod
    def _choice(
        body: dict[str, Any], last: generation_pb2.GenerateResponse | None
    ) -> dict[str, Any]:
        return {
            "index": 0,
            **body,
            "logprobs": None,
            "finish_reason": finish_reason(last) if last is not None else None,
            "stop_reason": stop_reason(last) if last is not None else None,
        }

    def _chunk_of(
        self,
        body: dict[str, Any],
        last: generation_pb2.GenerateResponse | None,
        include_usage: bool,
    ) -> dict[str, Any]:
        out = self._base(self.chunk_object)
        out["choices"] = [self._choice(body, last)]
        if include_usage:
            out["usage"] = None
        return out

    def chunk(
        self, text: str, last: generation_pb2.GenerateResponse | None, *, include_usage: bool
    ) -> dict[str, Any]:
        """One streamed chunk: new text; ``last`` (the final response) adds the finish reason."""
        return self._chunk_of(self._streamed(text), last, include_usage)

    def usage_chunk(self, last: generation_pb2.GenerateResponse) -> dict[str, Any]:
        """The last streamed chunk when ``include_usage`` is set: usage, no choices."""
        out = self._base(self.chunk_object)
        out["choices"] = []
        out["usage"] = usage(last)
        return out

    def whole(self, text: str, last: generation_pb2.GenerateResponse) -> dict[str, Any]:
        """The non-streamed answer."""
        out = self._base(self.whole_object)
        out["choices"] = [self._choice(self._answered(text), last)]
        out["usage"] = usage(last)
        return out

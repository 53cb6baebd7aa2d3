"""Pieces of the OpenAI response objects common to both endpoints."""

from __future__ import annotations

from typing import Any

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

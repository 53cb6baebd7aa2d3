"""``/v1/completions``: the request mapping and the response shapes (as OpenAI and vLLM send them).

The prompt is a string, a list of token ids, or a one-element list of either; longer lists
(batches) are refused with a 400: send one request per prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pdserve.v1 import generation_pb2
from router.http.errors import bad_request
from router.http.params import (
    COMMON_PARAMS,
    COMMON_UNSUPPORTED,
    SAMPLING_PARAMS,
    StreamMode,
    check_params,
    sampling_params,
    stream_mode,
    token_ids,
)
from router.http.shapes import ResponseShapes

KNOWN = COMMON_PARAMS | SAMPLING_PARAMS | {"prompt"}


def completion_request(
    body: Mapping[str, Any], *, request_id: str
) -> tuple[generation_pb2.GenerateRequest, StreamMode]:
    """The ``GenerateRequest`` of a ``/v1/completions`` body, and how to answer it."""
    check_params(body, known=KNOWN, unsupported=COMMON_UNSUPPORTED)
    mode = stream_mode(body)
    request = generation_pb2.GenerateRequest(request_id=request_id)
    prompt = _single_prompt(body.get("prompt"))
    if isinstance(prompt, str):
        request.prompt = prompt
    else:
        request.token_ids.ids.extend(prompt)
    request.sampling.CopyFrom(sampling_params(body))
    return request, mode


def _single_prompt(prompt: Any) -> str | list[int]:
    if prompt is None:
        raise bad_request("prompt is required", param="prompt", code="missing_parameter")
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise bad_request(
            "prompt must be a string, a list of token ids, or a one-element list of either",
            param="prompt",
        )
    if all(isinstance(p, str | list) for p in prompt):
        if len(prompt) != 1:
            raise bad_request(
                f"batch prompts are not supported (got {len(prompt)} prompts); send one "
                "request per prompt",
                param="prompt",
                code="unsupported_parameter",
            )
        return (
            _single_prompt(prompt[0])
            if isinstance(prompt[0], str)
            else token_ids(prompt[0], "prompt")
        )
    return token_ids(prompt, "prompt")


class CompletionShapes(ResponseShapes):
    """JSON objects of one ``/v1/completions`` answer."""

    id_prefix = "cmpl"
    chunk_object = "text_completion"
    whole_object = "text_completion"

    def _streamed(self, text: str) -> dict[str, Any]:
        return {"text": text}

    def _answered(self, text: str) -> dict[str, Any]:
        return {"text": text}

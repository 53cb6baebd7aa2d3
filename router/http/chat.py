"""``/v1/chat/completions``: the request mapping and the response shapes.

Messages are ``{"role", "content"}`` with ``content`` a string or a list of ``{"type": "text"}``
parts (joined with newlines, as vLLM does); ``name`` is accepted and ignored; ``developer`` is
treated as ``system``. The conversation is rendered with the served model's chat template by the
router core. Without ``max_tokens`` / ``max_completion_tokens`` the answer may run to the end of
the model's context, as in OpenAI's API.
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
)
from router.http.shapes import ResponseShapes

KNOWN = COMMON_PARAMS | SAMPLING_PARAMS | {"messages", "max_completion_tokens"}

UNSUPPORTED: Mapping[str, tuple[Any, ...]] = {
    **COMMON_UNSUPPORTED,
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "add_generation_prompt": (None, True),
    "continue_final_message": (None, False),
    "chat_template": (None,),
    "chat_template_kwargs": (None, {}),
    "documents": (None,),
}

_MESSAGE_KEYS = frozenset({"role", "content", "name"})


def chat_request(
    body: Mapping[str, Any], *, request_id: str, max_model_len: int
) -> tuple[generation_pb2.GenerateRequest, StreamMode]:
    """The ``GenerateRequest`` of a ``/v1/chat/completions`` body, and how to answer it."""
    check_params(body, known=KNOWN, unsupported=UNSUPPORTED)
    mode = stream_mode(body)
    request = generation_pb2.GenerateRequest(request_id=request_id)
    for role, content in _messages(body.get("messages")):
        request.chat.messages.add(role=role, content=content)
    request.sampling.CopyFrom(
        sampling_params(body, max_tokens_names=("max_completion_tokens", "max_tokens"))
    )
    if not request.sampling.HasField("max_tokens"):
        # The core caps the budget at the room left in the context.
        request.sampling.max_tokens = max_model_len
    return request, mode


def _messages(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad_request("messages must be a non-empty list of messages", param="messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise bad_request(f"{where} must be an object", param="messages")
        extra = sorted(set(message) - _MESSAGE_KEYS)
        if extra:
            raise bad_request(
                f"{where} has unsupported field(s): {', '.join(extra)} "
                "(tool calls are not supported)",
                param="messages",
                code="unsupported_parameter",
            )
        role = message.get("role")
        if not isinstance(role, str):
            raise bad_request(f"{where}.role must be a string", param="messages")
        out.append(("system" if role == "developer" else role, _content(message, where)))
    return out


def _content(message: Mapping[str, Any], where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise bad_request(
                    f"{where}.content[{j}] must be a text part ({{'type': 'text', 'text': ...}}); "
                    "other content types are not supported",
                    param="messages",
                    code="unsupported_parameter",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"{where}.content[{j}].text must be a string", param="messages")
            texts.append(text)
        return "\n".join(texts)
    raise bad_request(f"{where}.content must be a string or a list of text parts", param="messages")


class ChatShapes(ResponseShapes):
    """JSON objects of one ``/v1/chat/completions`` answer."""

    id_prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"
    whole_object = "chat.completion"

    def _streamed(self, text: str) -> dict[str, Any]:
        return {"delta": {"content": text}}

    def _answered(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}

    def role_chunk(self, *, include_usage: bool) -> dict[str, Any]:
        """The first streamed chunk: the assistant's role and empty content."""
        return self._chunk_of({"delta": {"role": "assistant", "content": ""}}, None, include_usage)

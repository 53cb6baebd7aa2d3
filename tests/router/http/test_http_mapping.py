"""Request mapping, validation and error shapes of the HTTP front door; no engine needed."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve.errors import (
    InvalidRequest,
    NoWorkerAvailable,
    Overloaded,
    RequestDeadlineExceeded,
    WorkerFailed,
)
from pdserve.v1 import generation_pb2
from router.http.chat import chat_request
from router.http.completions import completion_request
from router.http.errors import ApiError, from_pdserve_error, model_not_found


def _completion(**body: Any) -> generation_pb2.GenerateRequest:
    request, _ = completion_request(body, request_id="r1")
    return request


def _error(call: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args, **kwargs)
    return info.value


def test_completion_maps_every_sampling_parameter() -> None:
    request = _completion(
        model="m",
        prompt="Hello",
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        seed=123,
        stop=["\n", "END"],
        stop_token_ids=[2, 3],
        ignore_eos=True,
        n=1,
        user="someone",
    )
    assert request.prompt == "Hello"
    assert request.request_id == "r1"
    s = request.sampling
    assert s.max_tokens == 7
    assert s.temperature == pytest.approx(0.5)
    assert s.top_p == pytest.approx(0.9)
    assert s.top_k == 40
    assert s.seed == 123
    assert list(s.stop) == ["\n", "END"]
    assert list(s.stop_token_ids) == [2, 3]
    assert s.ignore_eos


def test_unset_parameters_stay_unset_for_the_core_defaults() -> None:
    s = _completion(prompt="x").sampling
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        assert not s.HasField(name), name
    assert not s.stop and not s.ignore_eos


@pytest.mark.parametrize(
    ("prompt", "kind", "value"),
    [
        ("text", "prompt", "text"),
        (["text"], "prompt", "text"),
        ([1, 2, 3], "token_ids", [1, 2, 3]),
        ([[4, 5]], "token_ids", [4, 5]),
    ],
)
def test_prompt_forms(prompt: Any, kind: str, value: Any) -> None:
    request = _completion(prompt=prompt)
    assert request.WhichOneof("input") == kind
    got = request.prompt if kind == "prompt" else list(request.token_ids.ids)
    assert got == value


def test_stop_as_a_single_string() -> None:
    assert list(_completion(prompt="x", stop="###").sampling.stop) == ["###"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [[1], [2]]}, "prompt"),
        ({}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "max_tokens": "9"}, "max_tokens"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "temperature": float("nan")}, "temperature"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "top_k": 1.5}, "top_k"),
        ({"prompt": "x", "stop": [1]}, "stop"),
        ({"prompt": "x", "ignore_eos": 1}, "ignore_eos"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_bad_values_are_400_naming_the_parameter(body: dict[str, Any], param: str) -> None:
    error = _error(completion_request, body, request_id="r")
    assert error.status == 400
    assert error.param == param
    assert error.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        {"logprobs": 1},
        {"echo": True},
        {"best_of": 3},
        {"presence_penalty": 0.5},
        {"logit_bias": {"1": 5}},
        {"response_format": {"type": "json_object"}},
    ],
)
def test_unsupported_parameters_are_400_naming_them(body: dict[str, Any]) -> None:
    error = _error(completion_request, {"prompt": "x", **body}, request_id="r")
    assert error.status == 400
    assert error.code == "unsupported_parameter"
    (name,) = body
    assert error.param == name
    assert name in error.message


def test_unsupported_parameters_at_their_no_op_values_are_accepted() -> None:
    # Clients such as vLLM's benchmark send these with neutral values.
    _completion(
        prompt="x",
        logprobs=None,
        echo=False,
        best_of=1,
        presence_penalty=0,
        frequency_penalty=0.0,
        repetition_penalty=1.0,
        n=1,
    )
    # ``0 == False`` in Python; logprobs 0 still asks for log-probabilities.
    assert _error(completion_request, {"prompt": "x", "logprobs": 0}, request_id="r").param == (
        "logprobs"
    )


def test_unknown_parameters_are_400_listing_all_of_them() -> None:
    error = _error(completion_request, {"prompt": "x", "foo": 1, "bar": 2}, request_id="r")
    assert error.status == 400
    assert error.code == "unknown_parameter"
    assert "bar, foo" in error.message


def test_stream_options() -> None:
    _, mode = completion_request(
        {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}}, request_id="r"
    )
    assert mode.stream and mode.include_usage
    _, mode = completion_request({"prompt": "x", "stream": True}, request_id="r")
    assert mode.stream and not mode.include_usage
    error = _error(
        completion_request,
        {"prompt": "x", "stream": True, "stream_options": {"continuous_usage_stats": True}},
        request_id="r",
    )
    assert error.code == "unsupported_parameter"


def test_chat_maps_messages_and_max_completion_tokens() -> None:
    request, mode = chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": "ok", "name": "bot"},
            ],
            "max_completion_tokens": 5,
            "temperature": 0,
            "stream": True,
        },
        request_id="c1",
        max_model_len=2048,
    )
    assert [(m.role, m.content) for m in request.chat.messages] == [
        ("system", "Be brief."),
        ("user", "a\nb"),
        ("assistant", "ok"),
    ]
    assert request.sampling.max_tokens == 5
    assert request.sampling.HasField("temperature") and request.sampling.temperature == 0
    assert mode.stream


def test_chat_without_a_budget_may_use_the_whole_context() -> None:
    request, _ = chat_request(
        {"messages": [{"role": "user", "content": "hi"}]}, request_id="c", max_model_len=321
    )
    assert request.sampling.max_tokens == 321


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"messages": []}, "invalid_value"),
        ({"messages": [{"role": "user"}]}, "invalid_value"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "unsupported_parameter",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
            "unsupported_parameter",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            "unsupported_parameter",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 3,
                "max_completion_tokens": 4,
            },
            "invalid_value",
        ),
    ],
)
def test_chat_bad_requests(body: dict[str, Any], code: str) -> None:
    error = _error(chat_request, body, request_id="c", max_model_len=100)
    assert error.status == 400
    assert error.code == code


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (
            InvalidRequest("sampling.top_p must be in (0, 1], got 2.0", request_id="r"),
            400,
            "invalid_value",
        ),
        (Overloaded("busy"), 429, "overloaded"),
        (NoWorkerAvailable("none"), 503, "no_worker_available"),
        (WorkerFailed("died"), 503, "worker_failed"),
        (RequestDeadlineExceeded("late"), 504, "deadline_exceeded"),
    ],
)
def test_core_errors_map_to_http_statuses(exc: Exception, status: int, code: str) -> None:
    error = from_pdserve_error(exc)  # type: ignore[arg-type]
    assert (error.status, error.code) == (status, code)
    body = error.body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == str(exc)
    assert ("Retry-After" in error.headers()) == (status == 429)


def test_core_field_names_become_http_parameter_names() -> None:
    assert from_pdserve_error(
        InvalidRequest("sampling.top_p must be...", request_id="r")
    ).param == ("top_p")
    assert from_pdserve_error(InvalidRequest("chat.messages[0].role must be")).param == "messages"
    assert from_pdserve_error(InvalidRequest("token_ids.ids contains 99999")).param == "prompt"


def test_unknown_model_is_404() -> None:
    error = model_not_found("gpt-9", "tiny")
    assert error.status == 404
    assert error.body()["error"]["code"] == "model_not_found"
    assert "gpt-9" in error.message and "tiny" in error.message

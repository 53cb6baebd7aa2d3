"""Parameters shared by ``/v1/completions`` and ``/v1/chat/completions``.

Turns the JSON body's sampling fields into a ``pdserve.v1.SamplingParams`` and rejects, with a
400 naming them, the parameters the router does not know and those it knows but cannot honour.
A parameter the router cannot honour is still accepted when it carries its no-op value (``n: 1``,
``logprobs: null``, ``echo: false``, ``presence_penalty: 0``...), since many clients always send
those. Ranges are checked by the core (:func:`pdserve.sampling.check_sampling`); this module checks
types and the limits of the wire types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

from pdserve.v1 import generation_pb2
from router.http.errors import bad_request

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
INT32_MAX = 2**31 - 1

SAMPLING_PARAMS = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "stop_token_ids",
        "ignore_eos",
    }
)
"""Sampling parameters mapped to ``SamplingParams`` fields of the same name."""

COMMON_PARAMS = frozenset({"model", "stream", "stream_options", "n", "user", "request_id"})
"""Accepted by both endpoints (``n`` only as 1; ``user`` is ignored)."""

# Known parameters the router cannot honour -> the values that change nothing.
COMMON_UNSUPPORTED: Mapping[str, tuple[Any, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "repetition_penalty": (None, 1),
    "logit_bias": (None, {}),
    "min_p": (None, 0),
    "min_tokens": (None, 0),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "prompt_logprobs": (None,),
    "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, True),
    "spaces_between_special_tokens": (None, True),
    "truncate_prompt_tokens": (None,),
    "response_format": (None, {"type": "text"}),
    "structured_outputs": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "priority": (None, 0),
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "metadata": (None, {}),
    "kv_transfer_params": (None,),
}


@dataclass(frozen=True)
class StreamMode:
    """Whether and how to stream the answer."""

    stream: bool = False
    include_usage: bool = False
    """Send a last chunk with the usage and no choices (``stream_options.include_usage``)."""


def check_params(
    body: Mapping[str, Any],
    *,
    known: Set[str],
    unsupported: Mapping[str, tuple[Any, ...]],
) -> None:
    """Rejects unknown parameters, then supported-in-name-only ones with a non-neutral value."""
    unknown = sorted(set(body) - known - set(unsupported))
    if unknown:
        raise bad_request(
            f"unknown parameter(s): {', '.join(unknown)}",
            param=unknown[0],
            code="unknown_parameter",
        )
    refused = sorted(
        name for name in body if name in unsupported and not _neutral(body[name], unsupported[name])
    )
    if refused:
        raise bad_request(
            f"unsupported parameter(s): {', '.join(refused)}; this server does not implement "
            f"them (leave them out or at their default)",
            param=refused[0],
            code="unsupported_parameter",
        )
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise bad_request(f"n must be 1 (one choice per request), got {n!r}", param="n")


def stream_mode(body: Mapping[str, Any]) -> StreamMode:
    """``stream`` and ``stream_options`` (only ``include_usage`` is supported)."""
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request(f"stream must be a boolean, got {stream!r}", param="stream")
    options = body.get("stream_options")
    if options is None:
        return StreamMode(stream)
    if not stream:
        raise bad_request(
            "stream_options can only be set when stream is true", param="stream_options"
        )
    if not isinstance(options, Mapping):
        raise bad_request("stream_options must be an object", param="stream_options")
    extra = sorted(set(options) - {"include_usage", "continuous_usage_stats"})
    if extra or options.get("continuous_usage_stats"):
        names = extra or ["continuous_usage_stats"]
        raise bad_request(
            f"unsupported stream_options: {', '.join(names)} (only include_usage is supported)",
            param="stream_options",
            code="unsupported_parameter",
        )
    include_usage = options.get("include_usage")
    if include_usage is None:
        include_usage = False
    if not isinstance(include_usage, bool):
        raise bad_request("stream_options.include_usage must be a boolean", param="stream_options")
    return StreamMode(True, include_usage)


def sampling_params(
    body: Mapping[str, Any], *, max_tokens_names: tuple[str, ...] = ("max_tokens",)
) -> generation_pb2.SamplingParams:
    """The ``SamplingParams`` of a request body; unset fields stay unset (core defaults)."""
    msg = generation_pb2.SamplingParams()
    max_tokens = _max_tokens(body, max_tokens_names)
    if max_tokens is not None:
        msg.max_tokens = max_tokens
    if (temperature := _number(body, "temperature")) is not None:
        msg.temperature = temperature
    if (top_p := _number(body, "top_p")) is not None:
        msg.top_p = top_p
    if (top_k := _integer(body, "top_k", low=-1, high=INT32_MAX)) is not None:
        msg.top_k = top_k
    if (seed := _integer(body, "seed", low=0, high=UINT64_MAX)) is not None:
        msg.seed = seed
    msg.stop.extend(_stop(body))
    stop_token_ids = body.get("stop_token_ids")
    if stop_token_ids is not None:
        msg.stop_token_ids.extend(token_ids(stop_token_ids, "stop_token_ids"))
    ignore_eos = body.get("ignore_eos")
    if ignore_eos is not None:
        if not isinstance(ignore_eos, bool):
            raise bad_request(
                f"ignore_eos must be a boolean, got {ignore_eos!r}", param="ignore_eos"
            )
        msg.ignore_eos = ignore_eos
    return msg


def token_ids(value: Any, param: str) -> list[int]:
    """A list of token ids (non-negative integers)."""
    if not isinstance(value, list) or not all(_is_int(t) and 0 <= t <= UINT32_MAX for t in value):
        raise bad_request(f"{param} must be a list of non-negative integer token ids", param=param)
    return list(value)


def optional_string(body: Mapping[str, Any], name: str) -> str:
    """A string parameter, ``""`` when unset."""
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string, got {type(value).__name__}", param=name)
    return value


def _max_tokens(body: Mapping[str, Any], names: tuple[str, ...]) -> int | None:
    values = {name: _integer(body, name, low=None, high=INT32_MAX) for name in names}
    given = {name: v for name, v in values.items() if v is not None}
    if len(set(given.values())) > 1:
        raise bad_request(
            f"{' and '.join(given)} disagree ({', '.join(map(str, given.values()))}); set one",
            param=names[0],
        )
    return next(iter(given.values()), None)


def _stop(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise bad_request("stop must be a string or a list of strings", param="stop")


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request(f"{name} must be a finite number, got {value!r}", param=name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, *, low: int | None, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        raise bad_request(f"{name} must be an integer, got {value!r}", param=name)
    if (low is not None and value < low) or value > high:
        lower = "" if low is None else f"{low}.."
        raise bad_request(f"{name} must be in {lower}{high}, got {value}", param=name)
    if value < -(2**31):
        raise bad_request(f"{name} is out of range, got {value}", param=name)
    return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    # ``0 == False`` in Python: compare with the type too, so ``logprobs: 0`` is not ``false``.
    return any(value == n and type(value) in _same_kind(n) for n in neutral) or value is None


def _same_kind(value: Any) -> tuple[type, ...]:
    if value is None:
        return (type(None),)
    if isinstance(value, bool):
        return (bool,)
    if isinstance(value, int | float):
        return (int, float)
    return (type(value),)

"""Errors of the HTTP front door, in the OpenAI error shape.

Every error leaves as ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status
OpenAI clients expect:

=========================  ======  =========================  ==========================
cause                      status  type                       code
=========================  ======  =========================  ==========================
malformed or bad request   400     invalid_request_error      invalid_value, ...
unknown model              404     not_found_error            model_not_found
Overloaded                 429     rate_limit_error           overloaded (+ Retry-After)
NoWorkerAvailable          503     service_unavailable_error  no_worker_available
WorkerFailed               503     service_unavailable_error  worker_failed
RequestDeadlineExceeded    504     timeout_error              deadline_exceeded
anything else              500     internal_error             internal_error
=========================  ======  =========================  ==========================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pdserve.errors import (
    InvalidRequest,
    NoWorkerAvailable,
    Overloaded,
    PdserveError,
    RequestDeadlineExceeded,
    WorkerFailed,
)

RETRY_AFTER_S = 1
"""Seconds an overloaded router asks clients to wait (``Retry-After``)."""

# Fields of the gRPC request named in the core's messages -> the HTTP parameter they came from.
_FIELD_TO_PARAM = {
    "prompt": "prompt",
    "token_ids.ids": "prompt",
    "chat.messages": "messages",
    "request_id": "request_id",
}
_FIELD_RE = re.compile(r"^(?:\[[^\]]*\] )?(sampling\.\w+|token_ids\.ids|chat\.messages|prompt)\b")


@dataclass
class ApiError(Exception):
    """An error answered to an HTTP client; :meth:`body` is its OpenAI-shaped JSON."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = "invalid_value"

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After`` on 429)."""
        return {"Retry-After": str(RETRY_AFTER_S)} if self.status == 429 else {}


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_value") -> ApiError:
    """A 400 ``invalid_request_error``."""
    return ApiError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str, served: str) -> ApiError:
    """The 404 of a request for a model this router does not serve."""
    return ApiError(
        404,
        f"the model {model!r} does not exist; this router serves {served!r}",
        "not_found_error",
        "model",
        "model_not_found",
    )


def from_pdserve_error(exc: PdserveError) -> ApiError:
    """Maps one of pdserve's errors (see :mod:`pdserve.errors`) to its HTTP answer."""
    message = str(exc)
    if isinstance(exc, InvalidRequest):
        return bad_request(message, param=_param_of(exc.message))
    if isinstance(exc, Overloaded):
        return ApiError(429, message, "rate_limit_error", None, "overloaded")
    if isinstance(exc, NoWorkerAvailable):
        return ApiError(503, message, "service_unavailable_error", None, "no_worker_available")
    if isinstance(exc, WorkerFailed):
        return ApiError(503, message, "service_unavailable_error", None, "worker_failed")
    if isinstance(exc, RequestDeadlineExceeded):
        return ApiError(504, message, "timeout_error", None, "deadline_exceeded")
    return ApiError(500, message, "internal_error", None, "internal_error")


def _param_of(message: str) -> str | None:
    match = _FIELD_RE.match(message)
    if match is None:
        return None
    field = match.group(1)
    if field.startswith("sampling."):
        return field.removeprefix("sampling.")
    return _FIELD_TO_PARAM.get(field)

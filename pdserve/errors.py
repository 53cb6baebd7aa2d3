"""pdserve's errors, mapped to gRPC status codes only at the server edge.

PdserveError                  base; carries the request id when there is one
├── InvalidRequest            INVALID_ARGUMENT: the request names a bad field
├── Overloaded                RESOURCE_EXHAUSTED: queues are full; retry later
├── NoWorkerAvailable         UNAVAILABLE: no registered worker can take the request
├── WorkerFailed              UNAVAILABLE: a worker died or broke off mid-request
└── RequestDeadlineExceeded   DEADLINE_EXCEEDED: the request's deadline passed
"""

from __future__ import annotations

import grpc


class PdserveError(Exception):
    """Base of pdserve's errors."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, request_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        return f"[{self.request_id}] {self.message}" if self.request_id else self.message


class InvalidRequest(PdserveError):
    """The request is malformed; the message names the field and the allowed values."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(PdserveError):
    """Too many requests are queued; the client should retry after a while."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NoWorkerAvailable(PdserveError):
    """No registered worker can take the request."""

    code = grpc.StatusCode.UNAVAILABLE


class WorkerFailed(PdserveError):
    """A worker failed while serving the request."""

    code = grpc.StatusCode.UNAVAILABLE


class RequestDeadlineExceeded(PdserveError):
    """The request's deadline passed before it finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED

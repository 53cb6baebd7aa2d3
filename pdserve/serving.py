"""What every pdserve gRPC server shares: options, health, reflection, error mapping."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pdserve.errors import PdserveError
from pdserve.validation import UndecodableRequestInterceptor

logger = logging.getLogger(__name__)

__all__ = ["RETRY_AFTER_KEY", "RETRY_AFTER_MS", "abort_with", "channel_options", "make_server"]

RETRY_AFTER_KEY = "retry-after-ms"
"""Trailing-metadata key of the retry hint sent with RESOURCE_EXHAUSTED."""
RETRY_AFTER_MS = 1000
"""How long a client told RESOURCE_EXHAUSTED should wait before it retries."""


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def make_server(
    service_names: Sequence[str], *, max_message_bytes: int = 16 * 1024 * 1024
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A grpc.aio server that already serves ``grpc.health.v1`` (each service and the overall
    status start SERVING) and reflection for ``service_names``."""
    server = grpc.aio.server(
        options=channel_options(max_message_bytes),
        interceptors=[UndecodableRequestInterceptor()],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, names: Sequence[str]) -> None:
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def abort_with(context: grpc.aio.ServicerContext, error: PdserveError) -> None:
    """Ends the call with the error's status code and message (never returns); an overload
    also carries the retry hint ``retry-after-ms`` in the trailing metadata."""
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        context.set_trailing_metadata(((RETRY_AFTER_KEY, str(RETRY_AFTER_MS)),))
    await context.abort(error.code, str(error))

"""The router's OpenAI-compatible HTTP front door (``/v1/completions``, ``/v1/chat/completions``,
``/v1/models``, ``/health``, ``/metrics``), on the same core as the gRPC API.

Modules: ``app`` (routes and server), ``completions`` and ``chat`` (request mapping and response
shapes of each endpoint), ``params`` (parameters both share), ``relay`` (JSON or server-sent
events from the core's stream), ``errors`` (the OpenAI error shape and HTTP statuses),
``metrics`` (Prometheus exposition of the router's counters). See docs/openai.md.
"""

from router.http.app import HttpServer, build_app
from router.http.errors import ApiError

__all__ = ["ApiError", "HttpServer", "build_app"]

"""Joining a Ray cluster, or starting a local one for ``pdserve up`` and the tests.

A local node offers the pool resources (``pdserve_prefill``, ``pdserve_decode``) generously, so
the pool manager places every worker on it. Ray gives its raylet a fixed time to register; on a
loaded machine that can run out, so a start that timed out is tried again (a real failure fails
every attempt).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pdserve.planner.signals import POOLS
from pdserve.ray_runtime.names import RAY_NAMESPACE, resource_name

__all__ = ["RayNode", "RayOptions", "connect_ray", "local_pool_resources"]

logger = logging.getLogger(__name__)

LOCAL_WORKERS_PER_POOL = 64
"""Units of each pool resource a local node offers (the most workers per pool it can host)."""


@dataclass
class RayOptions:
    """How pdserve reaches Ray."""

    address: str = ""
    """A running cluster to join (``auto``, ``host:port``, ``ray://...``); empty: start one."""
    num_cpus: int | None = None
    """CPUs of a local node (default: all)."""
    num_gpus: int | None = None
    """GPUs of a local node (default: all Ray detects)."""
    include_dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    metrics_export_port: int | None = None
    """Port of the local node's Prometheus endpoint (default: Ray picks one)."""
    system_config: dict[str, Any] = field(default_factory=dict)
    """Ray ``_system_config`` of a local node (e.g. ``metrics_report_interval_ms``)."""
    start_attempts: int = 3

    def __post_init__(self) -> None:
        if self.start_attempts < 1:
            raise ValueError(f"start_attempts must be >= 1, got {self.start_attempts}")


@dataclass
class RayNode:
    """The Ray cluster this process is connected to."""

    address: str
    started_here: bool
    dashboard_url: str
    """``http://host:port`` of the dashboard, empty when there is none."""
    metrics_export_port: int
    """Prometheus port of this process's node (``/metrics``)."""


LOCAL_SYSTEM_CONFIG: dict[str, Any] = {"worker_niceness": 0}
"""Ray starts its workers at niceness 15 by default; pdserve's workers are the serving path, and
on a shared machine a niced engine starves behind any busy process."""


def local_pool_resources() -> dict[str, float]:
    """The custom resources a local node offers: many workers of each pool."""
    return {resource_name(role): float(LOCAL_WORKERS_PER_POOL) for role in POOLS}


def connect_ray(options: RayOptions) -> RayNode:
    """Joins ``options.address`` or starts a local Ray; returns where it runs."""
    import ray

    if ray.is_initialized():
        return _describe(started_here=False, dashboard_url="")
    if options.address:
        context = ray.init(
            address=options.address, namespace=RAY_NAMESPACE, log_to_driver=False
        )
        return _describe(started_here=False, dashboard_url=_url(context))
    for attempt in range(options.start_attempts):
        try:
            context = ray.init(
                num_cpus=options.num_cpus,
                num_gpus=options.num_gpus,
                resources=local_pool_resources(),
                namespace=RAY_NAMESPACE,
                include_dashboard=options.include_dashboard,
                dashboard_host=options.dashboard_host,
                dashboard_port=options.dashboard_port,
                log_to_driver=False,
                _metrics_export_port=options.metrics_export_port,
                _system_config={**LOCAL_SYSTEM_CONFIG, **options.system_config},
            )
            return _describe(started_here=True, dashboard_url=_url(context))
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == options.start_attempts - 1:
                raise
            logger.warning("Ray start timed out (attempt %d); trying again", attempt + 1)
            ray.shutdown()
    raise AssertionError("unreachable")


def _url(context: Any) -> str:
    url = str(getattr(context, "dashboard_url", "") or "")
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return url


def _describe(*, started_here: bool, dashboard_url: str) -> RayNode:
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    port = 0
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            port = int(node.get("MetricsExportPort") or 0)
    return RayNode(
        address=ray.get_runtime_context().gcs_address,
        started_here=started_here,
        dashboard_url=dashboard_url,
        metrics_export_port=port,
    )

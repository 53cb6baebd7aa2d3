"""A whole pdserve cluster on Ray: ``pdserve up``'s default launcher.

:class:`RayLocalCluster` starts a ``redis-server`` (unless given a URL), starts a local Ray (or
joins one), creates the pool manager and through it the prefill and decode worker actors, waits
until every worker is ready in the registry, then starts the router as a child process (a
router needs only Redis, never Ray). It has the public attributes of
:class:`pdserve.launcher.LocalCluster` (``router_address``, ``redis_url``, ``worker_ids``,
``worker_endpoints``, ``log_dir``, ``procs``) plus ``pool_manager`` and ``ray_node``.

:meth:`RayLocalCluster.stop` stops the router, removes the workers and the pool manager, shuts
down the Ray it started, and stops Redis.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from pdserve.launcher import ClusterProcesses, ClusterSpec
from pdserve.ray_runtime.names import POOL_MANAGER_NAME, RAY_NAMESPACE, worker_id
from pdserve.ray_runtime.node import RayNode, RayOptions, connect_ray
from pdserve.ray_runtime.placement import PlacementPolicy

__all__ = ["RayClusterOptions", "RayLocalCluster"]

logger = logging.getLogger(__name__)


@dataclass
class RayClusterOptions:
    """What the Ray launcher needs beyond :class:`~pdserve.launcher.ClusterSpec`."""

    ray: RayOptions = field(default_factory=RayOptions)
    placement: PlacementPolicy = field(default_factory=PlacementPolicy)
    drain_timeout_s: float = 30.0
    """How long a drained worker may take to finish its running requests."""
    reconcile_interval_s: float = 2.0


class RayLocalCluster(ClusterProcesses):
    """Starts and stops a pdserve cluster on Ray (see the module docstring)."""

    def __init__(self, spec: ClusterSpec, options: RayClusterOptions | None = None) -> None:
        if not spec.kv_transfer:
            raise ValueError("the Ray launcher runs disaggregated pools only (kv_transfer=True)")
        super().__init__(spec)
        self.options = options or RayClusterOptions()
        self.ray_node: RayNode | None = None
        self.pool_manager: Any = None

    # -- start ------------------------------------------------------------------------------

    def _start(self) -> None:
        import ray

        from pdserve.ray_runtime.pool_manager import PoolManager

        spec = self.spec
        config = self._write_config()

        self.ray_node = connect_ray(self.options.ray)
        worker_config = config.to_dict()
        worker_env = {}
        if not self.options.ray.address:
            # Every worker shares this machine: each takes free ports of its own.
            worker_config["worker"]["grpc_port"] = 0
            worker_config["worker"]["nixl_port"] = 0
            worker_env["PDSERVE_ADVERTISE_HOST"] = "127.0.0.1"
        # One machine: pin CPU engines to cores, as the process launcher does (vLLM's own
        # binding would put every engine on the same core).
        cpu_cores = (os.cpu_count() or 1) if spec.cpu_bind and not self.options.ray.address else 0
        try:
            ray.get_actor(POOL_MANAGER_NAME, namespace=RAY_NAMESPACE)
        except ValueError:
            pass
        else:
            raise RuntimeError(
                f"a pdserve pool manager ({POOL_MANAGER_NAME!r}) already runs in this Ray "
                "cluster; stop that pdserve first"
            )
        self.pool_manager = (
            ray.remote(PoolManager)
            .options(
                name=POOL_MANAGER_NAME,
                namespace=RAY_NAMESPACE,
                lifetime="detached",
                num_cpus=0,
                max_restarts=-1,
                max_concurrency=100,
            )
            .remote(
                worker_config,
                placement=self.options.placement,
                worker_env=worker_env,
                drain_timeout_s=self.options.drain_timeout_s,
                reconcile_interval_s=self.options.reconcile_interval_s,
                cpu_cores=cpu_cores,
            )
        )
        ray.get(self.pool_manager.ping.remote(), timeout=120)
        for role, n in (("prefill", spec.num_prefill), ("decode", spec.num_decode)):
            ray.get(self.pool_manager.scale.remote(role, n), timeout=60)
            self.worker_ids[role] = [worker_id(role, i) for i in range(n)]
        self._wait_for_workers()
        self._start_router()

    def _wait_for_workers(self) -> None:
        import ray

        expected = {w for ids in self.worker_ids.values() for w in ids}
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        deadline = time.monotonic() + self.spec.start_timeout_s
        next_check = 0.0
        try:
            while True:
                ready = {
                    w for w in expected if client.hget(f"pdserve:worker:{w}", "state") == "ready"
                }
                if ready == expected:
                    for w in sorted(expected):
                        endpoint = client.hget(f"pdserve:worker:{w}", "endpoint")
                        self.worker_endpoints[w] = str(endpoint)
                    return
                if time.monotonic() > next_check:
                    next_check = time.monotonic() + 5.0
                    failed = [
                        f"{w['name']}: {w.get('error') or 'failed'}"
                        for w in ray.get(self.pool_manager.workers.remote(), timeout=60)
                        if w["state"] == "failed"
                    ]
                    if failed:
                        raise RuntimeError(
                            "workers failed to start: "
                            + "; ".join(failed)
                            + " (their logs are in Ray's session log directory)"
                        )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"workers {sorted(expected - ready)} did not register within "
                        f"{self.spec.start_timeout_s:.0f} s"
                    )
                time.sleep(0.2)
        finally:
            client.close()

    # -- operations -------------------------------------------------------------------------

    def scale(self, role: str, n: int, timeout_s: float = 120.0) -> dict[str, int]:
        """Sets pool ``role`` to ``n`` workers through the pool manager."""
        import ray

        sizes: dict[str, int] = ray.get(self.pool_manager.scale.remote(role, n), timeout=timeout_s)
        return sizes

    def workers(self) -> list[dict[str, Any]]:
        """The pool manager's view of every worker actor."""
        import ray

        rows: list[dict[str, Any]] = ray.get(self.pool_manager.workers.remote(), timeout=60)
        return rows

    # -- stop -------------------------------------------------------------------------------

    def stop(self, grace_s: float = 20.0) -> None:
        """Stops the router, the workers, the pool manager, the Ray it started, then Redis."""
        import ray

        router = [(n, p) for n, p in self.procs if n != "redis"]
        rest = [(n, p) for n, p in self.procs if n == "redis"]
        self._stop_procs(router, grace_s)
        if self.pool_manager is not None and ray.is_initialized():
            try:
                ray.get(self.pool_manager.shutdown.remote(), timeout=60)
            except Exception as exc:  # the workers die with Ray below when it was started here
                logger.warning("pool manager shutdown failed: %s", exc)
            with contextlib.suppress(Exception):
                ray.kill(self.pool_manager, no_restart=True)
            self.pool_manager = None
        if self.ray_node is not None and self.ray_node.started_here and ray.is_initialized():
            ray.shutdown()
        self.ray_node = None
        self._stop_procs(rest, grace_s)
        self.procs.clear()

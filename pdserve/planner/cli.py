"""The ``pdserve planner`` subcommand.

Examples::

    pdserve planner --redis-url redis://localhost:6379/0 --dry-run --once
    pdserve planner --config /etc/pdserve/config.yaml --raycluster pdserve --namespace serving \
        --ray-address ray://pdserve-head-svc:10001
    pdserve planner --redis-url redis://localhost:6379/0 --ray-address auto

With ``--raycluster`` the planner patches the RayCluster's worker-group replicas. Adding
``--ray-address`` makes scale-downs drain first: the pool manager (looked up in that Ray cluster
when the first scale-down comes) drains the surplus workers, and their pods are named in the
PATCH (``scaleStrategy.workersToDelete``), so KubeRay deletes those and no busy one. Without it
KubeRay picks the pods to delete itself, requests in flight on them included.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from pdserve.config import PdserveConfig, redis_password
from pdserve.planner.actuators import (
    POOL_MANAGER_NAME,
    RAY_NAMESPACE,
    Actuator,
    ActuatorError,
    KubernetesActuator,
    RayActuator,
    call_method,
)
from pdserve.planner.policy import PlannerPolicy
from pdserve.planner.runner import PlannerRunner
from pdserve.planner.signals import RedisSignalSource

__all__ = ["PoolManagerDrainer", "add_parser", "build_actuator", "run_planner"]

logger = logging.getLogger(__name__)

WINDOW_INTERVALS = 3
"""The signal window spans this many decision intervals."""


DRAIN_TIMEOUT_S = 300.0
"""Longest wait for the pool manager to drain workers before a scale-down patch."""


def _lookup_pool_manager(address: str, name: str, namespace: str) -> Any:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError as exc:
        raise ActuatorError(
            f"no pool manager actor {name!r} in Ray namespace {namespace!r} at {address} (on "
            f"Kubernetes the Ray head's pool-manager sidecar creates it): {exc}"
        ) from exc


class PoolManagerDrainer:
    """The pool manager as the ``KubernetesActuator``'s drainer.

    The actor is looked up in the Ray cluster at ``address`` on the first ``drain`` (so the
    planner starts, and scales up, while Ray is still starting) and again after a failed call.
    A scale-down whose drain fails raises :class:`ActuatorError` and patches nothing: no pod is
    deleted undrained.
    """

    def __init__(
        self,
        address: str,
        *,
        name: str = POOL_MANAGER_NAME,
        namespace: str = RAY_NAMESPACE,
        timeout_s: float = DRAIN_TIMEOUT_S,
        lookup: Callable[[str, str, str], Any] = _lookup_pool_manager,
    ) -> None:
        if not address:
            raise ValueError("the Ray address of the pool manager must not be empty")
        self.address = address
        self.name = name
        self.namespace = namespace
        self.timeout_s = timeout_s
        self._lookup = lookup
        self._handle: Any = None

    async def drain(self, role: str, count: int) -> list[str]:
        """Drains ``count`` workers of ``role`` through the pool manager; returns their pod
        names."""
        if self._handle is None:
            self._handle = await asyncio.to_thread(
                self._lookup, self.address, self.name, self.namespace
            )
        try:
            pods = await asyncio.wait_for(
                call_method(self._handle, "drain", role, count), self.timeout_s
            )
        except ActuatorError:
            raise
        except Exception as exc:
            self._handle = None  # a restarted or re-created manager is looked up again
            raise ActuatorError(f"draining {count} {role} worker(s) failed: {exc}") from exc
        return [str(p) for p in pods]


def build_actuator(
    args: argparse.Namespace,
    *,
    api_client: Any | None = None,
    pool_manager_lookup: Callable[[str, str, str], Any] = _lookup_pool_manager,
) -> tuple[Actuator | None, KubernetesActuator | None]:
    """The actuator the parsed ``args`` ask for, and the Kubernetes one again (to close it):
    ``--raycluster``: a :class:`KubernetesActuator`, with a :class:`PoolManagerDrainer` when
    ``--ray-address`` is given too; else the Ray pool manager (none for a dry run without
    ``--ray-address``). ``api_client``: the Kubernetes client to use (default: in-cluster);
    ``pool_manager_lookup(address, name, namespace)``: how the drainer finds the pool manager
    (default: joins Ray and looks the actor up)."""
    if args.raycluster:
        drainer = (
            PoolManagerDrainer(args.ray_address, lookup=pool_manager_lookup)
            if args.ray_address
            else None
        )
        if drainer is None:
            logger.warning(
                "--raycluster without --ray-address: scale-downs do not drain; KubeRay deletes "
                "pods of its choice, requests in flight on them included"
            )
        kube = KubernetesActuator(
            args.raycluster, args.namespace, api_client=api_client, drainer=drainer
        )
        return kube, kube
    if not args.dry_run or args.ray_address:
        return RayActuator.connect(args.ray_address), None
    return None, None


def add_parser(subparsers: Any) -> None:
    """Registers the ``planner`` subcommand on an ``argparse`` subparsers object; its handler
    is stored as ``args.handler`` (call it with the parsed args; it returns an exit code)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "planner",
        help="autoscale the prefill and decode pools from SLO signals",
        description=(
            "Every interval, read request latencies and worker load from Redis, decide the size "
            "of the prefill and decode pools, and apply it through Ray (default) or by patching "
            "the KubeRay RayCluster (--raycluster)."
        ),
    )
    parser.add_argument("--config", help="pdserve YAML config (default: $PDSERVE_CONFIG)")
    parser.add_argument("--redis-url", help="Redis of the worker registry (default: redis.url)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print decisions, change nothing"
    )
    parser.add_argument(
        "--interval", type=float, help="seconds between decisions (default: planner.interval_s)"
    )
    parser.add_argument(
        "--raycluster", help="act on this KubeRay RayCluster through the Kubernetes API"
    )
    parser.add_argument(
        "--namespace", default="default", help="Kubernetes namespace of the RayCluster"
    )
    parser.add_argument(
        "--ray-address",
        help="Ray cluster of the pool manager (default: the running one); with --raycluster, "
        "scale-downs drain through it first",
    )
    parser.add_argument("--once", action="store_true", help="decide once and exit")
    parser.set_defaults(handler=run_planner)


def run_planner(args: argparse.Namespace) -> int:
    """Runs the planner as the parsed ``args`` say; returns the exit code."""
    if args.interval is not None and args.interval <= 0:
        raise SystemExit(f"--interval must be > 0, got {args.interval}")
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    from redis.asyncio import Redis

    config = PdserveConfig.load(args.config)
    url = args.redis_url or config.redis.url
    if not url:
        raise SystemExit("the planner needs Redis: pass --redis-url or set redis.url")
    interval_s = args.interval or config.planner.interval_s
    redis = Redis.from_url(url, password=redis_password())
    actuator: Actuator | None = None
    kube: KubernetesActuator | None = None
    try:
        actuator, kube = build_actuator(args)
        runner = PlannerRunner(
            RedisSignalSource(redis, config.slo, window_s=WINDOW_INTERVALS * interval_s),
            PlannerPolicy(config.planner, config.slo),
            actuator,
            interval_s=interval_s,
            dry_run=args.dry_run,
        )
        if args.once:
            await runner.step()
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        logger.info(
            "planner running every %.1fs (%s)", interval_s, "dry run" if args.dry_run else "acting"
        )
        await runner.run(stop)
        return 0
    finally:
        if kube is not None:
            kube.close()
        await redis.aclose()

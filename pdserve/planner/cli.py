"""The ``pdserve planner`` subcommand.

Examples::

    pdserve planner --redis-url redis://localhost:6379/0 --dry-run --once
    pdserve planner --config /etc/pdserve/config.yaml --raycluster pdserve --namespace serving
    pdserve planner --redis-url redis://localhost:6379/0 --ray-address auto
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from pdserve.config import PdserveConfig, redis_password
from pdserve.planner.actuators import Actuator, KubernetesActuator, RayActuator
from pdserve.planner.policy import PlannerPolicy
from pdserve.planner.runner import PlannerRunner
from pdserve.planner.signals import RedisSignalSource

__all__ = ["add_parser", "run_planner"]

logger = logging.getLogger(__name__)

WINDOW_INTERVALS = 3
"""The signal window spans this many decision intervals."""


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
        "--ray-address", help="Ray cluster of the pool manager (default: the running one)"
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
        if args.raycluster:
            kube = KubernetesActuator(args.raycluster, args.namespace)
            actuator = kube
        elif not args.dry_run or args.ray_address:
            actuator = RayActuator.connect(args.ray_address)
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

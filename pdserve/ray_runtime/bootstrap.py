"""``pdserve pools``: creates the detached pool manager in a running Ray cluster and keeps it there.

On Kubernetes nothing else creates the pool manager (``pdserve up`` does it on one machine). The
Helm chart runs this command as a sidecar of the Ray head pod, joining through the Ray Client
port over the pod's loopback (see docs/deploy.md)::

    pdserve pools --config /etc/pdserve/config.yaml --ray-address ray://127.0.0.1:10001 \
        --follow-nodes

It joins Ray, gets the pool manager ``pdserve-pool-manager`` (namespace ``pdserve``) if it
exists, else creates it with the config of the file (get-if-exists, so two bootstraps never make
two managers), then checks it every ``--check-interval`` seconds: a manager that is gone (killed
without restart) is created again, and the new one adopts the worker actors it finds. SIGTERM or
SIGINT ends the command with exit code 0; the manager and its workers stay (they belong to the
Ray cluster, not to this process). With ``--follow-nodes`` the manager sizes each pool from the
Ray nodes that offer its resource (see :mod:`pdserve.ray_runtime.pool_manager`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from pdserve.config import PdserveConfig
from pdserve.ray_runtime.names import POOL_MANAGER_NAME, RAY_NAMESPACE

__all__ = [
    "BootstrapError",
    "PoolManagerOptions",
    "add_parser",
    "ensure_pool_manager",
    "run_pools",
]

logger = logging.getLogger(__name__)

HEAD_NODE_RESOURCE = "node:__internal_head__"
"""The resource Ray gives its head node only: the pool manager asks for a sliver of it, so it
runs next to the GCS and is never on a worker pod that a scale-down deletes."""


class BootstrapError(RuntimeError):
    """The pool manager in the cluster is not the one asked for (e.g. not following the nodes)."""


@dataclass(frozen=True)
class PoolManagerOptions:
    """How the bootstrap creates the pool manager."""

    follow_nodes: bool = False
    drain_timeout_s: float = 30.0
    reconcile_interval_s: float = 2.0
    drained_hold_s: float = 600.0


def _actor_options(cluster_resources: dict[str, float]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": POOL_MANAGER_NAME,
        "namespace": RAY_NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "num_cpus": 0,
        "max_restarts": -1,
        "max_concurrency": 100,
    }
    if cluster_resources.get(HEAD_NODE_RESOURCE, 0) > 0:
        options["resources"] = {HEAD_NODE_RESOURCE: 0.001}
    return options


def ensure_pool_manager(
    config: dict[str, Any], options: PoolManagerOptions, *, ready_timeout_s: float = 120.0
) -> tuple[Any, bool]:
    """Returns ``(handle, created)``: the pool manager of the connected Ray cluster, created
    from ``config`` if there was none. Raises :class:`BootstrapError` when the one found does not
    follow the nodes as ``options`` asks (two modes would fight over the pools)."""
    import ray

    from pdserve.ray_runtime.pool_manager import PoolManager

    created = False
    handle: Any
    try:
        handle = ray.get_actor(POOL_MANAGER_NAME, namespace=RAY_NAMESPACE)
    except ValueError:
        remote: Any = ray.remote(PoolManager)
        handle = (
            remote
            .options(**_actor_options(ray.cluster_resources()))
            .remote(
                config,
                follow_nodes=options.follow_nodes,
                drain_timeout_s=options.drain_timeout_s,
                reconcile_interval_s=options.reconcile_interval_s,
                drained_hold_s=options.drained_hold_s,
            )
        )
        created = True
    described: dict[str, Any] = ray.get(handle.describe.remote(), timeout=ready_timeout_s)
    # A racing bootstrap may have created it between the lookup and get_if_exists: then the
    # handle is that one's, and this "created" is harmless (logs only).
    follows = bool(described.get("follow_nodes", False))
    if follows != options.follow_nodes:
        raise BootstrapError(
            f"the pool manager {POOL_MANAGER_NAME!r} in this Ray cluster has follow_nodes="
            f"{follows}, not {options.follow_nodes}; stop the pdserve that created it (or kill "
            f"the actor) before running this one"
        )
    return handle, created


def _alive(handle: Any, timeout_s: float) -> bool:
    import ray

    try:
        return ray.get(handle.ping.remote(), timeout=timeout_s) == "ok"
    except Exception as exc:  # dead, restarting or unreachable: looked up again
        logger.warning("pool manager did not answer: %s", exc)
        return False


def run_pools(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Runs ``pdserve pools`` as the parsed ``args`` say; returns the exit code."""
    import ray

    if args.check_interval <= 0:
        raise SystemExit(f"--check-interval must be > 0, got {args.check_interval}")
    config = PdserveConfig.load(args.config)
    if not config.redis.url:
        raise SystemExit("the pool manager needs Redis: set redis.url (or PDSERVE_REDIS_URL)")
    options = PoolManagerOptions(
        follow_nodes=args.follow_nodes,
        drain_timeout_s=args.drain_timeout,
        reconcile_interval_s=args.reconcile_interval,
        drained_hold_s=args.drained_hold,
    )
    event = stop or threading.Event()

    def on_signal() -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: event.set())

    on_signal()
    address = args.ray_address or os.environ.get("RAY_ADDRESS") or "auto"
    while not event.is_set() and not ray.is_initialized():
        try:
            ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False)
        except Exception as exc:  # the head may still be starting
            if args.once:
                logger.error("cannot join Ray at %s: %s", address, exc)
                return 1
            logger.warning("cannot join Ray at %s (%s); retrying", address, exc)
            event.wait(args.check_interval)
    on_signal()  # a Ray driver installs a SIGTERM handler that exits at once: ours again
    try:
        handle = None
        while not event.is_set():
            if handle is None or not _alive(handle, args.check_interval * 2):
                try:
                    handle, created = ensure_pool_manager(config.to_dict(), options)
                except BootstrapError as exc:
                    logger.error("%s", exc)
                    return 2
                except Exception as exc:
                    logger.warning("could not get or create the pool manager: %s", exc)
                    handle = None
                else:
                    logger.info(
                        "pool manager %s %s (follow_nodes=%s)", POOL_MANAGER_NAME,
                        "created" if created else "found", options.follow_nodes,
                    )
                if args.once:
                    return 0 if handle is not None else 1
            event.wait(args.check_interval)
        logger.info("stopping; the pool manager and its workers stay in the Ray cluster")
        return 0
    finally:
        if ray.is_initialized():
            ray.shutdown()


def add_parser(subparsers: Any) -> None:
    """Registers the ``pools`` subcommand; its handler is stored as ``args.handler``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "pools",
        help="create the Ray pool manager in a running Ray cluster and keep it alive",
        description=(
            "Join a running Ray cluster, create the detached pdserve pool manager there unless "
            "it exists, and re-create it whenever it is gone. With --follow-nodes the pools "
            "follow the Ray nodes offering pdserve_prefill / pdserve_decode (KubeRay's worker "
            "groups). Ends on SIGTERM; the pool manager stays."
        ),
    )
    parser.add_argument("--config", help="pdserve YAML config (default: $PDSERVE_CONFIG)")
    parser.add_argument(
        "--ray-address",
        help="Ray cluster to join: host:gcs_port, ray://host:port or auto "
        "(default: $RAY_ADDRESS, else auto)",
    )
    parser.add_argument(
        "--follow-nodes",
        action="store_true",
        help="one worker per unit of pdserve_<role> the alive Ray nodes offer; the worker "
        "groups' replicas decide the pool sizes (scale() is refused)",
    )
    parser.add_argument(
        "--check-interval", type=float, default=5.0,
        help="seconds between checks that the pool manager is alive (default 5)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=30.0,
        help="seconds a drained worker may take to finish its requests (default 30)",
    )
    parser.add_argument(
        "--reconcile-interval", type=float, default=2.0,
        help="seconds between the pool manager's reconcile rounds (default 2)",
    )
    parser.add_argument(
        "--drained-hold", type=float, default=600.0,
        help="seconds a drained node that is still in the cluster gets no new worker "
        "(default 600)",
    )
    parser.add_argument(
        "--once", action="store_true", help="get or create the pool manager, then exit"
    )
    parser.set_defaults(handler=run_pools)

"""``pdserve status`` on Ray: the pools, their worker actors and the dashboard's address.

:func:`read_ray_status` connects to a running Ray cluster (if any answers) and asks the pool
manager; :func:`format_ray_status` renders the answer as text (plain, testable without Ray).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from pdserve.ray_runtime.names import POOL_MANAGER_NAME, RAY_NAMESPACE

__all__ = ["RayStatus", "format_ray_status", "read_ray_status", "read_ray_status_bounded"]

logger = logging.getLogger(__name__)


@dataclass
class RayStatus:
    """What the pool manager of a Ray cluster reports."""

    address: str
    dashboard_url: str
    manager: dict[str, Any] = field(default_factory=dict)
    """``PoolManager.describe()``; empty when no pool manager runs there."""
    workers: list[dict[str, Any]] = field(default_factory=list)
    """``PoolManager.workers()``."""


def read_ray_status(address: str = "auto", timeout_s: float = 30.0) -> RayStatus | None:
    """Asks the pool manager of the Ray cluster at ``address``; None when no Ray answers."""
    import ray

    try:
        context = ray.init(
            address=address,
            namespace=RAY_NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        logger.info("no Ray cluster at %s: %s", address, exc)
        return None
    try:
        url = str(getattr(context, "dashboard_url", "") or "")
        status = RayStatus(
            address=ray.get_runtime_context().gcs_address,
            dashboard_url=url if not url or url.startswith("http") else f"http://{url}",
        )
        try:
            manager = ray.get_actor(POOL_MANAGER_NAME, namespace=RAY_NAMESPACE)
        except ValueError:
            return status
        described: Any = ray.get(manager.describe.remote(), timeout=timeout_s)
        rows: Any = ray.get(manager.workers.remote(), timeout=timeout_s)
        status.manager = dict(described)
        status.workers = list(rows)
        return status
    finally:
        ray.shutdown()


def read_ray_status_bounded(address: str = "auto", timeout_s: float = 45.0) -> RayStatus | None:
    """:func:`read_ray_status` in a child process killed after ``timeout_s``, so that an
    unreachable or half-dead Ray cannot hang the caller; None when no answer came."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pdserve.ray_runtime.status", "--address", address],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        logger.warning("Ray at %s did not answer within %.0f s", address, timeout_s)
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or lines[-1] == "null":
        return None
    return RayStatus(**json.loads(lines[-1]))


def _main() -> None:
    parser = argparse.ArgumentParser(description="Print the Ray status of pdserve as JSON.")
    parser.add_argument("--address", default="auto")
    status = read_ray_status(parser.parse_args().address)
    print(json.dumps(asdict(status) if status is not None else None, default=str))


def format_ray_status(status: RayStatus) -> str:
    """The pools and worker actors as a table."""
    lines = [f"ray             {status.address}"]
    lines.append(f"dashboard       {status.dashboard_url or '(not running)'}")
    if not status.manager:
        lines.append(f"no pdserve pool manager ({POOL_MANAGER_NAME}) in this Ray cluster")
        return "\n".join(lines)
    desired = status.manager.get("desired", {})
    sizes = status.manager.get("sizes", {})
    lines.append(f"model           {status.manager.get('model', '')}")
    for role in ("prefill", "decode"):
        lines.append(
            f"pool {role:<10} {sizes.get(role, 0)} worker(s), desired {desired.get(role, 0)}"
        )
    lines.append("")
    lines.append(
        f"{'actor':<20} {'worker':<11} {'state':<9} {'restarts':>8} {'endpoint':<22} "
        f"{'node':<16} running waiting kv_usage"
    )
    for w in status.workers:
        kv_usage = float(w.get("kv_usage", 0.0))
        lines.append(
            f"{w.get('name', ''):<20} {w.get('worker_id', ''):<11} {w.get('state', ''):<9} "
            f"{w.get('restarts', 0):>8} {w.get('endpoint', '-'):<22} {w.get('node', '-'):<16} "
            f"{w.get('running', 0):>7} {w.get('waiting', 0):>7} {kv_usage:>8.1%}"
        )
        if w.get("error"):
            lines.append(f"    error: {w['error']}")
    return "\n".join(lines)


if __name__ == "__main__":
    _main()

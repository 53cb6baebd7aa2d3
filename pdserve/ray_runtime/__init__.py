"""pdserve on Ray: worker actors, the pool manager, the Ray launcher of ``pdserve up``, metrics.

Ray is imported only where it is used, so importing this package (names, placement, pool
bookkeeping) costs nothing. See docs/operations.md and docs/metrics.md.
"""

from __future__ import annotations

from pdserve.ray_runtime.names import (
    POOL_MANAGER_NAME,
    RAY_NAMESPACE,
    actor_name,
    parse_actor_name,
    resource_name,
    worker_id,
)
from pdserve.ray_runtime.placement import PlacementError, PlacementPolicy, worker_actor_options
from pdserve.ray_runtime.pool import MemberState, PoolBook, ScalePlan

__all__ = [
    "POOL_MANAGER_NAME",
    "RAY_NAMESPACE",
    "MemberState",
    "PlacementError",
    "PlacementPolicy",
    "PoolBook",
    "ScalePlan",
    "actor_name",
    "parse_actor_name",
    "resource_name",
    "worker_actor_options",
    "worker_id",
]

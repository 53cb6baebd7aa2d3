"""Where a worker actor may run and how Ray restarts it: the actor options of one worker.

A worker of role ``r`` needs one unit of the custom resource ``pdserve_<r>`` (the Helm chart's
worker groups advertise one per node; ``pdserve up`` gives the local node plenty), plus one GPU
when the cluster has GPUs. On a cluster without GPUs it asks for a fraction of a CPU
(:attr:`PlacementPolicy.cpu_fallback_num_cpus`) so that several CPU engines share a small
machine: they are placed by the pool resources, not by CPU count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pdserve.ray_runtime.names import RAY_NAMESPACE, actor_name, check_role, resource_name

__all__ = [
    "LABEL_MODEL",
    "LABEL_ROLE",
    "PlacementError",
    "PlacementPolicy",
    "cpu_core_for",
    "worker_actor_options",
]

LABEL_ROLE = "pdserve.io/role"
LABEL_MODEL = "pdserve.io/model"


class PlacementError(RuntimeError):
    """No node of the Ray cluster can ever host a worker of the requested role."""


@dataclass(frozen=True)
class PlacementPolicy:
    """How worker actors are placed and restarted."""

    max_restarts: int = 3
    """How many times Ray restarts a worker actor that died; then the pool manager recreates it."""
    gpu_num_cpus: float = 1.0
    """CPUs a worker asks for next to its GPU."""
    cpu_fallback_num_cpus: float = 0.5
    """CPUs a worker asks for on a cluster without GPUs (small, so 3 workers fit on 2 cores)."""
    use_gpus: bool | None = None
    """True/False forces GPU placement on or off; None: on when the cluster has GPUs."""

    def __post_init__(self) -> None:
        if self.max_restarts < -1:
            raise ValueError(f"max_restarts must be >= -1 (-1: forever), got {self.max_restarts}")
        if self.gpu_num_cpus < 0 or self.cpu_fallback_num_cpus < 0:
            raise ValueError("CPU requests must be >= 0")


def worker_actor_options(
    role: str,
    index: int,
    *,
    model: str,
    cluster_resources: Mapping[str, float],
    policy: PlacementPolicy | None = None,
) -> dict[str, Any]:
    """The ``.options(...)`` of the actor running worker ``index`` of ``role``.

    Raises :class:`PlacementError` when no node offers the role's pool resource (the actor would
    wait forever), naming the resource to add.
    """
    policy = policy or PlacementPolicy()
    check_role(role)
    resource = resource_name(role)
    if cluster_resources.get(resource, 0) < 1:
        raise PlacementError(
            f"no node of the Ray cluster offers the resource {resource!r}, so no {role} worker "
            f"can be placed; start {role} nodes with `ray start --resources "
            f"'{{\"{resource}\": 1}}'` (the Helm chart's worker groups do)"
        )
    use_gpus = policy.use_gpus
    if use_gpus is None:
        use_gpus = cluster_resources.get("GPU", 0) >= 1
    options: dict[str, Any] = {
        "name": actor_name(role, index),
        "namespace": RAY_NAMESPACE,
        "lifetime": "detached",
        "max_restarts": policy.max_restarts,
        "max_concurrency": 1000,
        "resources": {resource: 1},
        "_labels": {LABEL_ROLE: role, LABEL_MODEL: model},
    }
    if use_gpus:
        options["num_gpus"] = 1
        options["num_cpus"] = policy.gpu_num_cpus
    else:
        options["num_cpus"] = policy.cpu_fallback_num_cpus
    return options


def cpu_core_for(role: str, index: int, num_cores: int) -> int:
    """The core a CPU engine is pinned to when several share one machine: prefill and decode
    workers of the same index on different cores, indices spread round-robin."""
    check_role(role)
    if num_cores < 1:
        raise ValueError(f"num_cores must be >= 1, got {num_cores}")
    return (2 * index + (0 if role == "prefill" else 1)) % num_cores

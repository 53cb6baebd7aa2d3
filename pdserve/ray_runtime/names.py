"""Names of pdserve's Ray actors and of the workers they run.

Each worker actor is named ``pdserve:<role>:<index>`` in the Ray namespace ``pdserve``, and the
worker inside registers in Redis as ``<role>-<index>``. Both depend only on role and index, so an
actor Ray restarts comes back under the same name and replaces its own registry entry.
"""

from __future__ import annotations

from pdserve.planner.actuators import POOL_MANAGER_NAME, RAY_NAMESPACE
from pdserve.planner.signals import POOLS

__all__ = [
    "ACTOR_PREFIX",
    "POOL_MANAGER_NAME",
    "RAY_NAMESPACE",
    "actor_name",
    "check_role",
    "parse_actor_name",
    "resource_name",
    "worker_id",
]

ACTOR_PREFIX = "pdserve"


def check_role(role: str) -> str:
    """Returns ``role`` if it names a pool, else raises ``ValueError``."""
    if role not in POOLS:
        raise ValueError(f"unknown pool {role!r}; expected one of {POOLS}")
    return role


def _check_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"a worker index must be an int >= 0, got {index!r}")
    return index


def actor_name(role: str, index: int) -> str:
    """``pdserve:<role>:<index>``, the Ray actor name of a worker."""
    return f"{ACTOR_PREFIX}:{check_role(role)}:{_check_index(index)}"


def worker_id(role: str, index: int) -> str:
    """``<role>-<index>``, the registry id of the worker a named actor runs."""
    return f"{check_role(role)}-{_check_index(index)}"


def parse_actor_name(name: str) -> tuple[str, int]:
    """``(role, index)`` of an actor name made by :func:`actor_name`."""
    parts = name.split(":")
    if len(parts) != 3 or parts[0] != ACTOR_PREFIX or not parts[2].isdigit():
        raise ValueError(f"{name!r} is not a pdserve worker actor name (pdserve:<role>:<index>)")
    return check_role(parts[1]), int(parts[2])


def resource_name(role: str) -> str:
    """``pdserve_<role>``, the custom Ray resource a node offers per worker of ``role``."""
    return f"pdserve_{check_role(role)}"

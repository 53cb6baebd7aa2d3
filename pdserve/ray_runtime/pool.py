"""The bookkeeping of the worker pools, without Ray: members, desired sizes, what to change.

:class:`PoolBook` is what the pool manager actor keeps: per role the desired size and the
members by index, each in a :class:`MemberState`. :meth:`PoolBook.plan` says which indices to
create (the lowest free ones, so names stay small and stable) and which to drain (the newest
members first, and never one already draining).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pdserve.planner.signals import POOLS
from pdserve.ray_runtime.names import check_role

__all__ = ["MemberState", "PoolBook", "ScalePlan"]


class MemberState(enum.StrEnum):
    """Where a worker actor is in its life, as the pool manager sees it."""

    STARTING = "starting"
    """Created; its engine is loading (or Ray is restarting it)."""
    READY = "ready"
    """Serving and registered."""
    DRAINING = "draining"
    """Marked draining in the registry; finishing its running requests."""
    FAILED = "failed"
    """Its worker failed to start or Ray gave up restarting it; the manager recreates it."""


@dataclass
class ScalePlan:
    """What one ``scale(role, n)`` changes."""

    role: str
    create: list[int] = field(default_factory=list)
    drain: list[int] = field(default_factory=list)


class PoolBook:
    """Desired sizes and members of every pool."""

    def __init__(self) -> None:
        self.desired: dict[str, int] = {role: 0 for role in POOLS}
        self.members: dict[str, dict[int, MemberState]] = {role: {} for role in POOLS}

    def size(self, role: str) -> int:
        """Members of ``role`` that count towards its size (all but the draining ones)."""
        return sum(1 for s in self.members[check_role(role)].values() if s != MemberState.DRAINING)

    def sizes(self) -> dict[str, int]:
        return {role: self.size(role) for role in POOLS}

    def plan(self, role: str, n: int) -> ScalePlan:
        """Sets the desired size of ``role`` to ``n`` and says what to create and drain."""
        check_role(role)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"a pool size must be an int >= 0, got {n!r}")
        self.desired[role] = n
        members = self.members[role]
        active = sorted(i for i, s in members.items() if s != MemberState.DRAINING)
        plan = ScalePlan(role)
        if n > len(active):
            index = 0
            while len(plan.create) < n - len(active):
                if index not in members:
                    plan.create.append(index)
                index += 1
        elif n < len(active):
            # Newest (highest index) first: the oldest members keep their warm prefix caches.
            plan.drain = sorted(active, reverse=True)[: len(active) - n]
        return plan

    def pick_to_drain(self, role: str, count: int) -> list[int]:
        """``count`` active members of ``role`` to drain (newest first), fewer if there are not
        that many."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        members = self.members[check_role(role)]
        active = sorted((i for i, s in members.items() if s != MemberState.DRAINING), reverse=True)
        return active[:count]

    def set_state(self, role: str, index: int, state: MemberState) -> None:
        self.members[check_role(role)][index] = state

    def remove(self, role: str, index: int) -> None:
        self.members[check_role(role)].pop(index, None)

"""Filters: drop workers that cannot serve a request before they are scored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from router.policy.worker import Role, WorkerView

__all__ = ["CompatibilityFilter", "Filter", "ReadyFilter", "RoleFilter", "apply_filters"]


class Filter(Protocol):
    """Keeps the workers that may serve the request, in their given order."""

    name: str

    def filter(self, workers: Sequence[WorkerView]) -> list[WorkerView]:
        """The subset of ``workers`` that passes."""
        ...


class RoleFilter:
    """Keeps workers of one role."""

    name = "role"

    def __init__(self, role: Role) -> None:
        self.role = role

    def filter(self, workers: Sequence[WorkerView]) -> list[WorkerView]:
        return [w for w in workers if w.role == self.role]


class CompatibilityFilter:
    """Keeps workers whose KV-layout compatibility hash is ``compat_hash`` (all if ``None``)."""

    name = "compat"

    def __init__(self, compat_hash: str | None) -> None:
        self.compat_hash = compat_hash

    def filter(self, workers: Sequence[WorkerView]) -> list[WorkerView]:
        if self.compat_hash is None:
            return list(workers)
        return [w for w in workers if w.compat_hash == self.compat_hash]


class ReadyFilter:
    """Keeps workers in state ``ready`` (not starting, not draining)."""

    name = "ready"

    def filter(self, workers: Sequence[WorkerView]) -> list[WorkerView]:
        return [w for w in workers if w.state == "ready"]


def apply_filters(filters: Sequence[Filter], workers: Sequence[WorkerView]) -> list[WorkerView]:
    """Runs ``filters`` one after the other."""
    kept = list(workers)
    for each in filters:
        kept = each.filter(kept)
    return kept

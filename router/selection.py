"""Choosing the workers of a request.

:class:`RouteSelector` turns the live worker view into a :class:`Route`: the decode worker, the
prefill worker (None for decode-only requests) and the other prefill workers to retry on. It
pairs only workers whose KV layouts are compatible and round-robins among equals.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pdserve.errors import NoWorkerAvailable
from pdserve.registry import WorkerInfo
from router.workers import WorkerView

if TYPE_CHECKING:
    from router.dispatch import RequestState

logger = logging.getLogger(__name__)


@dataclass
class Route:
    """The workers chosen for one request."""

    decode: WorkerInfo
    prefill: WorkerInfo | None = None
    alternates: list[WorkerInfo] = field(default_factory=list)
    """Other compatible prefill workers, in retry order."""


class RouteSelector:
    """Round-robin over compatible ready workers."""

    def __init__(self, view: WorkerView) -> None:
        self.view = view
        self._counter = itertools.count()

    def _decode_candidates(self, state: RequestState) -> list[WorkerInfo]:
        decode = self.view.ready("decode", state.model)
        if not decode:
            raise NoWorkerAvailable(
                f"no decode worker is registered for model {state.model!r}; start one or wait "
                "for the pool to come up",
                request_id=state.request_id,
            )
        return decode

    async def select_decode(self, state: RequestState) -> WorkerInfo:
        candidates = self._decode_candidates(state)
        return candidates[next(self._counter) % len(candidates)]

    async def select(self, state: RequestState) -> Route:
        turn = next(self._counter)
        decode_pool = self._decode_candidates(state)
        decode = decode_pool[turn % len(decode_pool)]
        if state.sampling.max_tokens == 1:
            return Route(decode=decode)
        prefill_pool = [
            w
            for w in self.view.ready("prefill", state.model)
            if w.compat_hash == decode.compat_hash
        ]
        if not prefill_pool:
            return Route(decode=decode)
        first = turn % len(prefill_pool)
        ordered = prefill_pool[first:] + prefill_pool[:first]
        return Route(decode=decode, prefill=ordered[0], alternates=ordered[1:])

"""The planner loop: every interval read signals, decide, act, log and export metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from pdserve.planner.actuators import Actuator, ActuatorError
from pdserve.planner.policy import Decision, PlannerPolicy
from pdserve.planner.signals import POOLS, SignalSource

__all__ = ["PlannerMetrics", "PlannerRunner"]

logger = logging.getLogger(__name__)


class PlannerMetrics:
    """Desired and actual replicas per pool.

    Exported as the Ray gauge ``pdserve_planner_replicas{pool, kind=desired|actual}`` when Ray
    is initialized in this process (so the Ray dashboard shows it); always kept in ``values``.
    """

    GAUGE_NAME = "pdserve_planner_replicas"

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], int] = {}
        """``(pool, "desired"|"actual") -> replicas``."""
        self._gauge: Any = None
        ray = sys.modules.get("ray")  # Ray cannot be initialized unless something imported it
        if ray is not None and ray.is_initialized():
            from ray.util.metrics import Gauge

            self._gauge = Gauge(
                self.GAUGE_NAME,
                description="Replicas per pdserve pool: desired by the planner vs actual.",
                tag_keys=("pool", "kind"),
            )

    @property
    def exports_to_ray(self) -> bool:
        return self._gauge is not None

    def record(self, desired: Mapping[str, int], actual: Mapping[str, int]) -> None:
        """Stores (and exports) one decision's desired sizes and the sizes seen before it."""
        for kind, sizes in (("desired", desired), ("actual", actual)):
            for pool in POOLS:
                value = int(sizes.get(pool, 0))
                self.values[(pool, kind)] = value
                if self._gauge is not None:
                    self._gauge.set(value, tags={"pool": pool, "kind": kind})


class PlannerRunner:
    """Runs the policy against a signal source and an actuator.

    With ``dry_run`` decisions are printed and logged but never applied; ``actuator`` may then
    be None, and the pools' sizes are taken from the worker registry.
    """

    def __init__(
        self,
        source: SignalSource,
        policy: PlannerPolicy,
        actuator: Actuator | None,
        *,
        interval_s: float | None = None,
        dry_run: bool = False,
        metrics: PlannerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        echo: Callable[[str], None] = print,
    ) -> None:
        if actuator is None and not dry_run:
            raise ValueError("an actuator is required unless dry_run is set")
        self.source = source
        self.policy = policy
        self.actuator = actuator
        self.interval_s = interval_s if interval_s is not None else policy.config.interval_s
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")
        self.dry_run = dry_run
        self.metrics = metrics or PlannerMetrics()
        self._clock = clock
        self._echo = echo

    async def step(self) -> Decision:
        """One read-decide-act round; returns the decision."""
        signals = await self.source.read()
        current = (
            await self.actuator.current() if self.actuator is not None else dict(signals.replicas)
        )
        now = self._clock()
        decision = self.policy.decide(signals, current, now, commit=False)
        logger.info("planner decision: %s", decision.reason)
        logger.debug("planner inputs: %s", json.dumps(decision.to_dict(), default=str))
        if self.dry_run:
            self._echo(f"[dry-run] {decision.reason}")
            for role, pool in decision.pools.items():
                if pool.changed:
                    self.policy.record_change(role, now, pool.target - pool.current)
        else:
            await self._apply(decision, now)
        self.metrics.record(decision.targets, current)
        return decision

    async def _apply(self, decision: Decision, now: float) -> None:
        assert self.actuator is not None
        # Shrink first: under a shared budget the freed workers are what the other pool grows into.
        changes = sorted(
            (p for p in decision.pools.values() if p.changed), key=lambda p: p.target - p.current
        )
        for pool in changes:
            try:
                await self.actuator.scale(pool.role, pool.target)
            except ActuatorError as exc:
                logger.error("planner: scaling %s to %d failed: %s", pool.role, pool.target, exc)
                continue
            self.policy.record_change(pool.role, now, pool.target - pool.current)

    async def run(self, stop: asyncio.Event | None = None, max_steps: int | None = None) -> None:
        """Steps every ``interval_s`` until ``stop`` is set or ``max_steps`` rounds ran.

        A failed round is logged and the loop goes on; the next round starts one interval after
        the previous one started.
        """
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        steps = 0
        while not stop.is_set():
            started = loop.time()
            try:
                await self.step()
            except Exception:  # a bad round (Redis or API server away) must not end the loop
                logger.exception("planner round failed")
            steps += 1
            if max_steps is not None and steps >= max_steps:
                return
            delay = max(0.0, started + self.interval_s - loop.time())
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass

"""The pool manager: a detached Ray actor that owns the size of each worker pool.

It is created once per Ray cluster as ``POOL_MANAGER_NAME`` in namespace ``RAY_NAMESPACE`` (the
planner's ``RayActuator`` finds it there). ``scale(role, n)`` creates worker actors
(:class:`~pdserve.ray_runtime.worker_actor.WorkerActor`) or drains and removes them; a
background loop reconciles the actors with the desired sizes (an actor Ray gave up restarting is
created again) and exports the pools' gauges. A pool manager that restarts adopts the worker
actors it finds by name.

Draining a worker: it is marked ``draining`` in the registry (routers stop sending to it), its
running requests finish (up to ``drain_timeout_s``), then its actor is killed without restart and
its registration removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from pdserve.config import PdserveConfig, redis_password
from pdserve.ray_runtime.metrics import PoolMetrics
from pdserve.ray_runtime.names import actor_name, check_role, parse_actor_name, worker_id
from pdserve.ray_runtime.placement import PlacementPolicy, cpu_core_for, worker_actor_options
from pdserve.ray_runtime.pool import MemberState, PoolBook
from pdserve.ray_runtime.worker_actor import RESTARTS_KEY, WorkerActor
from pdserve.registry import Registry

__all__ = ["PoolManager"]

logger = logging.getLogger(__name__)

ACTOR_DIED = "the actor died and Ray gave up restarting it"
DEAD_AFTER_ROUNDS = 3


class PoolManager:
    """Creates, watches, drains and removes worker actors (run it as a detached actor)."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        placement: PlacementPolicy | None = None,
        worker_env: Mapping[str, str] | None = None,
        drain_timeout_s: float = 30.0,
        drain_settle_s: float = 1.0,
        reconcile_interval_s: float = 2.0,
        status_timeout_s: float = 5.0,
        cpu_cores: int = 0,
    ) -> None:
        """``cpu_cores`` > 0 (one machine without GPUs): pin each worker's CPU engine to one of
        that many cores (:func:`~pdserve.ray_runtime.placement.cpu_core_for`); 0: leave vLLM's
        own binding."""
        import ray

        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        self.config_dict = dict(config)
        self.config = PdserveConfig.from_dict(config)
        if not self.config.redis.url:
            raise ValueError("the pool manager needs redis.url (the workers register there)")
        self.placement = placement or PlacementPolicy()
        self.worker_env = dict(worker_env or {})
        self.drain_timeout_s = drain_timeout_s
        self.drain_settle_s = drain_settle_s
        self.status_timeout_s = status_timeout_s
        self.cpu_cores = cpu_cores
        self.book = PoolBook()
        self.handles: dict[tuple[str, int], Any] = {}
        self.last_status: dict[tuple[str, int], dict[str, Any]] = {}
        self._died_seen: dict[tuple[str, int], int] = {}
        self._lock = asyncio.Lock()
        self._remote_worker = ray.remote(WorkerActor)
        self._redis = aioredis.from_url(
            self.config.redis.url, password=redis_password(), decode_responses=True
        )
        self._registry = Registry(self._redis, ttl_s=self.config.redis.ttl_s)
        self.metrics = PoolMetrics()
        self._adopt()
        self._reconcile_task = asyncio.get_running_loop().create_task(
            self._reconcile_loop(reconcile_interval_s)
        )

    def _adopt(self) -> None:
        """Takes over the worker actors a previous incarnation of the manager created."""
        import ray

        for name in ray.util.list_named_actors():
            try:
                role, index = parse_actor_name(name)
            except ValueError:
                continue
            with contextlib.suppress(ValueError):
                self.handles[(role, index)] = ray.get_actor(name)
                self.book.set_state(role, index, MemberState.STARTING)
                self.book.desired[role] += 1
                logger.info("adopted worker actor %s", name)

    # -- the interface ----------------------------------------------------------------------

    async def scale(self, role: str, n: int) -> dict[str, int]:
        """Sets pool ``role`` to ``n`` workers: creates actors at once (their engines start in
        the background) or drains and removes the surplus (returns when they are gone).
        Returns the pool sizes."""
        async with self._lock:
            plan = self.book.plan(role, n)
            for index in plan.create:
                await self._create(role, index)
            for index in plan.drain:
                self.book.set_state(role, index, MemberState.DRAINING)
        if plan.create or plan.drain:
            logger.info(
                "pool %s -> %d: creating %s, draining %s", role, n, plan.create, plan.drain
            )
        await asyncio.gather(*(self._drain_and_remove(role, i) for i in plan.drain))
        return self.book.sizes()

    async def drain(self, role: str, count: int) -> list[str]:
        """Drains and removes ``count`` workers of ``role`` (newest first) and lowers the pool's
        desired size; returns the node names (Kubernetes pod names) they ran on."""
        check_role(role)
        async with self._lock:
            picked = self.book.pick_to_drain(role, count)
            for index in picked:
                self.book.set_state(role, index, MemberState.DRAINING)
            self.book.desired[role] = max(0, self.book.desired[role] - len(picked))
        statuses = await asyncio.gather(*(self._drain_and_remove(role, i) for i in picked))
        return [str(s.get("node", "")) for s in statuses if s.get("node")]

    def sizes(self) -> dict[str, int]:
        """Workers per pool, draining ones not counted (``{"prefill": n, "decode": m}``)."""
        return self.book.sizes()

    def describe(self) -> dict[str, Any]:
        """The model, Redis URL, desired and current sizes of the pools this manager runs."""
        return {
            "model": self.config.model.name,
            "redis_url": self.config.redis.url,
            "desired": dict(self.book.desired),
            "sizes": self.book.sizes(),
        }

    async def workers(self) -> list[dict[str, Any]]:
        """Every worker actor: name, role, worker id, state, endpoint, node, load, restarts."""
        await self._refresh_statuses()
        restarts = await self._restarts()
        rows = []
        keys = sorted((role, index) for role, members in self.book.members.items()
                      for index in members)
        for role, index in keys:
            state = self.book.members[role][index]
            row = dict(self.last_status.get((role, index), {}))
            row.update(
                name=actor_name(role, index),
                role=role,
                index=index,
                worker_id=worker_id(role, index),
                state=str(state),
                restarts=restarts.get(actor_name(role, index), 0),
            )
            rows.append(row)
        return rows

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stops every worker (short drain) and removes its actor; the manager stays."""
        self._reconcile_task.cancel()
        async with self._lock:
            keys = list(self.handles)
            for role, index in keys:
                self.book.set_state(role, index, MemberState.DRAINING)
                self.book.desired[role] = 0
        await asyncio.gather(
            *(self._drain_and_remove(r, i, timeout_s=timeout_s, settle_s=0.0) for r, i in keys)
        )

    def ping(self) -> str:
        return "ok"

    # -- internals --------------------------------------------------------------------------

    async def _create(self, role: str, index: int) -> None:
        import ray

        options = worker_actor_options(
            role,
            index,
            model=self.config.model.name,
            cluster_resources=ray.cluster_resources(),
            policy=self.placement,
        )
        config = self.config_dict
        if self.cpu_cores > 0 and "num_gpus" not in options:
            worker = dict(config.get("worker") or {})
            worker["cpu_threads_bind"] = str(cpu_core_for(role, index, self.cpu_cores))
            config = {**config, "worker": worker}
        # The name of an actor just killed is released asynchronously: retry briefly.
        for attempt in range(50):
            try:
                handle = self._remote_worker.options(**options).remote(
                    role,
                    index,
                    config,
                    env=self.worker_env,
                    drain_timeout_s=self.drain_timeout_s,
                )
                break
            except ValueError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        self.handles[(role, index)] = handle
        self.book.set_state(role, index, MemberState.STARTING)
        with contextlib.suppress(aioredis.RedisError, OSError):
            await self._redis.hdel(RESTARTS_KEY, actor_name(role, index))

    async def _drain_and_remove(
        self,
        role: str,
        index: int,
        *,
        timeout_s: float | None = None,
        settle_s: float | None = None,
    ) -> dict[str, Any]:
        import ray

        timeout = self.drain_timeout_s if timeout_s is None else timeout_s
        settle = self.drain_settle_s if settle_s is None else settle_s
        handle = self.handles.get((role, index))
        status: dict[str, Any] = dict(self.last_status.get((role, index), {}))
        if handle is not None:
            try:
                status = await asyncio.wait_for(
                    handle.drain.remote(timeout, settle), timeout + settle + 15.0
                )
            except Exception as exc:  # dead, restarting or stuck: it is removed regardless
                logger.warning("draining %s failed (%s); killing it", actor_name(role, index), exc)
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        try:
            await self._registry.deregister(worker_id(role, index))
            await self._redis.hdel(RESTARTS_KEY, actor_name(role, index))
        except (aioredis.RedisError, OSError) as exc:
            logger.warning("could not remove %s from the registry: %s", worker_id(role, index), exc)
        async with self._lock:
            self.handles.pop((role, index), None)
            self.last_status.pop((role, index), None)
            self.book.remove(role, index)
        logger.info("removed worker actor %s", actor_name(role, index))
        return status

    async def _restarts(self) -> dict[str, int]:
        try:
            raw = await self._redis.hgetall(RESTARTS_KEY)
        except (aioredis.RedisError, OSError):
            return {}
        return {str(k): int(v) for k, v in raw.items()}

    async def _status_of(self, key: tuple[str, int], handle: Any) -> None:
        import ray

        try:
            status = await asyncio.wait_for(handle.status.remote(), self.status_timeout_s)
        except ray.exceptions.ActorDiedError:
            # A call in flight when the actor died fails so even if Ray restarts it: only an
            # actor that answers "died" several rounds in a row is taken for dead.
            self._died_seen[key] = self._died_seen.get(key, 0) + 1
            state = self.book.members[key[0]].get(key[1])
            if state not in (None, MemberState.DRAINING):
                if self._died_seen[key] >= DEAD_AFTER_ROUNDS:
                    self.book.set_state(*key, MemberState.FAILED)
                    self.last_status[key] = {"state": "failed", "error": ACTOR_DIED}
                else:
                    self.book.set_state(*key, MemberState.STARTING)
            return
        except (TimeoutError, ray.exceptions.RayActorError):
            self._died_seen.pop(key, None)
            if self.book.members[key[0]].get(key[1]) not in (None, MemberState.DRAINING):
                self.book.set_state(*key, MemberState.STARTING)  # Ray is restarting it
            return
        self._died_seen.pop(key, None)
        self.last_status[key] = status
        if self.book.members[key[0]].get(key[1]) not in (None, MemberState.DRAINING):
            self.book.set_state(*key, MemberState(status["state"]))

    async def _refresh_statuses(self) -> None:
        await asyncio.gather(*(self._status_of(k, h) for k, h in list(self.handles.items())))

    async def _reconcile(self) -> None:
        import ray

        await self._refresh_statuses()
        async with self._lock:
            for (role, index), handle in list(self.handles.items()):
                state = self.book.members[role].get(index)
                error = self.last_status.get((role, index), {}).get("error")
                if state == MemberState.FAILED and error == ACTOR_DIED:
                    # Ray used up the actor's restarts: start it over under the same name.
                    logger.warning("worker actor %s is dead; creating it again",
                                   actor_name(role, index))
                    with contextlib.suppress(Exception):
                        ray.kill(handle, no_restart=True)
                    self.book.remove(role, index)
                    self.handles.pop((role, index), None)
                    self._died_seen.pop((role, index), None)
                    await self._create(role, index)
            for role, n in self.book.desired.items():
                missing = n - self.book.size(role)
                if missing > 0:
                    for index in self.book.plan(role, n).create:
                        await self._create(role, index)
        by_state: dict[tuple[str, str], int] = {
            (role, str(state)): 0 for role in self.book.members for state in MemberState
        }
        for role, members in self.book.members.items():
            for state in members.values():
                by_state[(role, str(state))] += 1
        self.metrics.export(self.book.desired, by_state)

    async def _reconcile_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._reconcile()
            except Exception:  # one bad round must not end reconciliation
                logger.exception("pool reconciliation failed")

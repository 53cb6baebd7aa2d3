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

Follow-the-nodes mode (``follow_nodes=True``, how the pool manager runs on Kubernetes): the Ray
nodes decide the pool sizes. Each reconcile sets the desired size of pool ``r`` to the units of
the resource ``pdserve_<r>`` the alive nodes offer (the Helm chart's worker pods offer one each,
so: one worker per pod), leaving out the workers drained through :meth:`PoolManager.drain` on
nodes that are still there (a drained pod that KubeRay has not deleted yet is not refilled; it is
forgotten when it leaves the cluster, or after ``drained_hold_s``). The worker groups' replicas
are then the only knob, and :meth:`PoolManager.scale` refuses (:class:`FollowModeError`).
:func:`follow_targets` and :class:`DrainedNodes` are that logic without Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from pdserve.config import PdserveConfig, redis_password
from pdserve.planner.signals import POOLS
from pdserve.ray_runtime.metrics import PoolMetrics
from pdserve.ray_runtime.names import (
    actor_name,
    check_role,
    parse_actor_name,
    resource_name,
    worker_id,
)
from pdserve.ray_runtime.placement import PlacementPolicy, cpu_core_for, worker_actor_options
from pdserve.ray_runtime.pool import MemberState, PoolBook
from pdserve.ray_runtime.worker_actor import RESTARTS_KEY, WorkerActor
from pdserve.registry import Registry

__all__ = [
    "DrainedNodes",
    "FollowModeError",
    "PoolManager",
    "alive_node_ids",
    "follow_surplus",
    "follow_targets",
]

logger = logging.getLogger(__name__)

ACTOR_DIED = "the actor died and Ray gave up restarting it"
DEAD_AFTER_ROUNDS = 3


class FollowModeError(RuntimeError):
    """``scale()`` was called on a pool manager that follows the Ray nodes."""


@dataclass
class DrainedNodes:
    """Workers drained through ``drain()``, by Ray node and role, until their node leaves.

    A drained worker's pod stays in the Ray cluster until KubeRay deletes it; meanwhile the
    resource it offered is free again, and a pool manager following the nodes would put a new
    worker there. Counting the drained workers of a node keeps that node out of the pool sizes.
    """

    hold_s: float = 600.0
    """An entry is forgotten after this long even if its node is still there (a pod the
    planner drained but KubeRay never deleted gets a worker again)."""
    entries: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    """(node id, role) -> when each worker there was drained (``time.monotonic()``)."""
    hostnames: dict[str, str] = field(default_factory=dict)
    """node id -> hostname (the pod name on Kubernetes), for logs and ``describe()``."""

    def add(self, node_id: str, role: str, hostname: str = "", now: float | None = None) -> None:
        """Records one worker of ``role`` drained on ``node_id``."""
        check_role(role)
        if not node_id:
            raise ValueError("a drained worker's node id must not be empty")
        stamp = time.monotonic() if now is None else now
        self.entries.setdefault((node_id, role), []).append(stamp)
        if hostname:
            self.hostnames[node_id] = hostname

    def count(self, node_id: str, role: str) -> int:
        """Workers of ``role`` drained on ``node_id`` and still remembered."""
        return len(self.entries.get((node_id, role), ()))

    def prune(self, alive: Collection[str], now: float | None = None) -> list[str]:
        """Forgets the nodes not in ``alive`` and the entries older than ``hold_s``; returns
        the node ids (or hostnames, when known) forgotten entirely."""
        stamp = time.monotonic() if now is None else now
        before = {node for node, _ in self.entries}
        for key in list(self.entries):
            if key[0] not in alive:
                del self.entries[key]
                continue
            kept = [t for t in self.entries[key] if stamp - t < self.hold_s]
            if kept:
                self.entries[key] = kept
            else:
                del self.entries[key]
        remembered = {node for node, _ in self.entries}
        forgotten = [self.hostnames.get(n) or n for n in sorted(before - remembered)]
        for n in [n for n in self.hostnames if n not in remembered]:
            del self.hostnames[n]
        return forgotten

    def describe(self) -> list[dict[str, Any]]:
        """One row per (node, role): node id, hostname, role, workers drained there."""
        return [
            {"node_id": node, "hostname": self.hostnames.get(node, ""), "role": role,
             "drained": len(stamps)}
            for (node, role), stamps in sorted(self.entries.items())
        ]


def alive_node_ids(nodes: Iterable[Mapping[str, Any]]) -> set[str]:
    """The ids of the alive nodes in a ``ray.nodes()`` list."""
    return {str(n.get("NodeID", "")) for n in nodes if n.get("Alive")}


def follow_targets(
    nodes: Iterable[Mapping[str, Any]], drained: DrainedNodes | None = None
) -> dict[str, int]:
    """The pool sizes that follow the Ray nodes: for each pool ``r``, the whole units of
    ``pdserve_<r>`` the alive nodes of ``nodes`` (a ``ray.nodes()`` list) offer, less the workers
    of ``r`` drained on each node (``drained``). Dead nodes count for nothing."""
    targets = {role: 0 for role in POOLS}
    for node in nodes:
        if not node.get("Alive"):
            continue
        node_id = str(node.get("NodeID", ""))
        resources = node.get("Resources") or {}
        for role in POOLS:
            units = int(float(resources.get(resource_name(role), 0.0)) + 1e-9)
            if drained is not None:
                units -= drained.count(node_id, role)
            targets[role] += max(0, units)
    return targets


def follow_surplus(members: Mapping[int, MemberState], n: int) -> list[int]:
    """The members (indices) to remove so that ``n`` stay, draining ones not counted: those not
    ready first (their node left, or they are still starting), then the newest ready ones."""
    active = [(i, s) for i, s in members.items() if s != MemberState.DRAINING]
    active.sort(key=lambda m: (m[1] == MemberState.READY, -m[0]))
    return [i for i, _ in active[: max(0, len(active) - n)]]


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
        follow_nodes: bool = False,
        drained_hold_s: float = 600.0,
    ) -> None:
        """``cpu_cores`` > 0 (one machine without GPUs): pin each worker's CPU engine to one of
        that many cores (:func:`~pdserve.ray_runtime.placement.cpu_core_for`); 0: leave vLLM's
        own binding. ``follow_nodes``: size the pools from the Ray nodes (see the module
        docstring); ``drained_hold_s``: how long a drained node stays out of the pool sizes at
        most while it is still in the cluster."""
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
        self.follow_nodes = follow_nodes
        self.drained = DrainedNodes(hold_s=drained_hold_s)
        self._removals: set[asyncio.Task[Any]] = set()
        self.rounds = 0
        """Reconcile rounds completed."""
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
        Returns the pool sizes.

        Raises :class:`FollowModeError` when the manager follows the Ray nodes: there the
        worker groups' replicas (the RayCluster) decide, and a size set here would be undone at
        the next reconcile."""
        if self.follow_nodes:
            raise FollowModeError(
                "this pool manager follows the Ray nodes (follow_nodes): the pool sizes are the "
                "worker groups' replicas; change those (kubectl scale / patch of the RayCluster, "
                "helm upgrade, or the planner with --raycluster) instead of calling scale()"
            )
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
        desired size; returns the node names they ran on: each worker's ``socket.gethostname()``,
        which on Kubernetes is its pod's name (what KubeRay's ``workersToDelete`` takes).

        Following the nodes, the nodes of the drained workers are remembered
        (:class:`DrainedNodes`) so that they get no new worker before KubeRay deletes them."""
        check_role(role)
        async with self._lock:
            picked = self.book.pick_to_drain(role, count)
            for index in picked:
                self.book.set_state(role, index, MemberState.DRAINING)
                if self.follow_nodes:
                    # Before the drain, under the lock: the reconcile must not count the node
                    # as free while (or after) its worker drains.
                    self._remember_drained(role, index)
            self.book.desired[role] = max(0, self.book.desired[role] - len(picked))
        statuses = await asyncio.gather(*(self._drain_and_remove(role, i) for i in picked))
        return [str(s.get("node", "")) for s in statuses if s.get("node")]

    def _remember_drained(self, role: str, index: int) -> None:
        hostname = str(self.last_status.get((role, index), {}).get("node", ""))
        handle = self.handles.get((role, index))
        node_id = self._node_of(handle) if handle is not None else ""
        node_id = node_id or self._node_by_hostname(hostname)
        if node_id:
            self.drained.add(node_id, role, hostname)
        else:
            logger.warning(
                "could not tell the node of drained worker %s; its node may get a new worker",
                actor_name(role, index),
            )

    def node_targets(self) -> dict[str, int]:
        """The pool sizes the Ray nodes call for now (:func:`follow_targets` of ``ray.nodes()``
        less the drained workers), whether or not this manager follows them."""
        import ray

        nodes = ray.nodes()
        self.drained.prune(alive_node_ids(nodes))
        return follow_targets(nodes, self.drained)

    def sizes(self) -> dict[str, int]:
        """Workers per pool, draining ones not counted (``{"prefill": n, "decode": m}``)."""
        return self.book.sizes()

    def describe(self) -> dict[str, Any]:
        """The model, Redis URL, desired and current sizes of the pools this manager runs, whether
        it follows the Ray nodes, the drained nodes it remembers, and its reconcile rounds."""
        return {
            "model": self.config.model.name,
            "redis_url": self.config.redis.url,
            "desired": dict(self.book.desired),
            "sizes": self.book.sizes(),
            "follow_nodes": self.follow_nodes,
            "drained_nodes": self.drained.describe(),
            "reconcile_rounds": self.rounds,
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

    @staticmethod
    def _node_of(handle: Any) -> str:
        """The Ray node id an actor runs on (from the GCS actor table); empty if unknown."""
        from ray._private import state

        try:
            info = state.actors(actor_id=handle._actor_id.hex())
        except Exception as exc:
            logger.debug("actor table lookup failed: %s", exc)
            return ""
        return str(((info or {}).get("Address") or {}).get("NodeID") or "")

    @staticmethod
    def _node_by_hostname(hostname: str) -> str:
        """The id of the one alive node with this hostname; empty when none or several."""
        import ray

        if not hostname:
            return ""
        matches = [
            str(n["NodeID"]) for n in ray.nodes()
            if n.get("Alive") and n.get("NodeManagerHostname") == hostname
        ]
        return matches[0] if len(matches) == 1 else ""

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

    async def _follow(self) -> None:
        """Sets the desired sizes from the Ray nodes; removes the surplus members, those not
        ready (on a node that left) first, then the newest."""
        import ray

        surplus: list[tuple[str, int, MemberState]] = []
        async with self._lock:
            # Under the lock, so that a drain() cannot slip between reading the nodes and
            # setting the sizes.
            nodes = ray.nodes()
            forgotten = self.drained.prune(alive_node_ids(nodes))
            if forgotten:
                logger.info("drained nodes gone or expired: %s", forgotten)
            targets = follow_targets(nodes, self.drained)
            for role, n in targets.items():
                if self.book.desired[role] != n:
                    logger.info("following the Ray nodes: pool %s -> %d", role, n)
                self.book.desired[role] = n
                members = self.book.members[role]
                for index in follow_surplus(members, n):
                    surplus.append((role, index, members[index]))
                    self.book.set_state(role, index, MemberState.DRAINING)
        for role, index, state in surplus:
            logger.info("pool %s: removing %s (%s): more workers than nodes", role,
                        actor_name(role, index), state)
            if state != MemberState.READY:
                # Not serving (its node left, or it never started): nothing to drain.
                handle = self.handles.get((role, index))
                if handle is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(handle, no_restart=True)
                self.handles.pop((role, index), None)
            task = asyncio.get_running_loop().create_task(self._drain_and_remove(role, index))
            self._removals.add(task)
            task.add_done_callback(self._removals.discard)

    async def _reconcile(self) -> None:
        import ray

        await self._refresh_statuses()
        if self.follow_nodes:
            await self._follow()
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
        self.rounds += 1

    async def _reconcile_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._reconcile()
            except Exception:  # one bad round must not end reconciliation
                logger.exception("pool reconciliation failed")

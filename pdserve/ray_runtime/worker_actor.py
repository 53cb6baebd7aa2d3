"""The Ray actor of one prefill or decode worker: a thin shell around ``WorkerProcess``.

The pool manager creates it as ``pdserve:<role>:<index>`` (see :mod:`.placement`). Its
constructor builds a :class:`~pdserve.worker_runtime.WorkerProcess` with the stable worker id
``<role>-<index>`` and starts it on the actor's event loop, so an actor that Ray restarts after
a crash starts a fresh engine and replaces its own registry entry. While it runs, it exports the
engine's load, latencies and KV-transfer totals as Ray metrics (:mod:`.metrics`) and exits the
process when its engine dies, so that Ray restarts it.

Restarts are counted in Redis (``{ns}:ray:restarts``, a HASH of actor name -> restarts), since a
restarted actor keeps no memory of its previous lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import redis.asyncio as aioredis

from pdserve.config import PdserveConfig, redis_password
from pdserve.ray_runtime.instrumentation import instrument_engine
from pdserve.ray_runtime.metrics import WorkerMetrics, load_totals
from pdserve.ray_runtime.names import actor_name, worker_id
from pdserve.ray_runtime.pool import MemberState
from pdserve.worker_runtime import WorkerOptions, WorkerProcess

__all__ = ["RESTARTS_KEY", "WorkerActor"]

logger = logging.getLogger(__name__)

RESTARTS_KEY = "pdserve:ray:restarts"

# vLLM starts its engine-core process with multiprocessing; inside a Ray worker (threads, an
# event loop already running) only "spawn" is safe.
DEFAULT_WORKER_ENV = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}


class WorkerActor:
    """One worker as a Ray actor (create it through the pool manager)."""

    def __init__(
        self,
        role: str,
        index: int,
        config: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        drain_timeout_s: float = 30.0,
        export_interval_s: float = 1.0,
    ) -> None:
        import ray

        for key, value in {**DEFAULT_WORKER_ENV, **(env or {})}.items():
            os.environ.setdefault(key, value)
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        self.role = role
        self.index = index
        self.name = actor_name(role, index)
        self.worker_id = worker_id(role, index)
        self.config = PdserveConfig.from_dict(config)
        self.export_interval_s = export_interval_s
        self.worker = WorkerProcess(
            WorkerOptions(
                role=role,  # type: ignore[arg-type]
                config=self.config,
                worker_id=self.worker_id,
                drain_timeout_s=drain_timeout_s,
            )
        )
        self.state = MemberState.STARTING
        self.error = ""
        self.started_at = time.time()
        self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        self.metrics = WorkerMetrics(role, self.worker_id, self.config.model.name)
        self._export_task: asyncio.Task[None] | None = None
        self._start_task = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        try:
            if self.restarted:
                self.metrics.add_restart()
                await self._count_restart()
            await self.worker.start()
            assert self.worker.engine is not None
            instrument_engine(self.worker.engine, self.metrics)
            self.state = MemberState.READY
            self._export_task = asyncio.create_task(self._export_loop())
            logger.info("actor %s: worker %s ready", self.name, self.worker_id)
        except Exception as exc:
            logger.exception("actor %s: worker %s failed to start", self.name, self.worker_id)
            self.state = MemberState.FAILED
            self.error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await self.worker.stop()

    async def _count_restart(self) -> None:
        client = aioredis.from_url(self.config.redis.url, password=redis_password())
        try:
            await client.hincrby(RESTARTS_KEY, self.name, 1)
        except (aioredis.RedisError, OSError) as exc:
            logger.warning("actor %s: could not count its restart: %s", self.name, exc)
        finally:
            await client.aclose()

    async def _export_loop(self) -> None:
        while True:
            engine = self.worker.engine
            if engine is None:
                return
            if engine.is_dead:
                # Exiting the process (not the actor) makes Ray restart it with a new engine.
                logger.error("actor %s: the engine died; exiting for a restart", self.name)
                os._exit(1)
            try:
                load = engine.load
                self.metrics.export_load(
                    running=load.num_running,
                    waiting=load.num_waiting,
                    kv_usage=load.kv_usage,
                    ready=self.state == MemberState.READY,
                    totals=load_totals(load, engine.transfers.snapshot()),
                )
            except Exception:  # a metrics hiccup must not stop the worker
                logger.exception("actor %s: exporting metrics failed", self.name)
            await asyncio.sleep(self.export_interval_s)

    async def wait_started(self, timeout_s: float | None = None) -> str:
        """Waits until the worker has started (or failed to); returns the state."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._start_task), timeout_s)
        return str(self.state)

    async def status(self) -> dict[str, Any]:
        """The actor's worker: identity, state, endpoint, node and load."""
        info: dict[str, Any] = {
            "name": self.name,
            "role": self.role,
            "index": self.index,
            "worker_id": self.worker_id,
            "state": str(self.state),
            "error": self.error,
            "node": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "endpoint": f"{self.worker.host}:{self.worker.grpc_port}",
            "running": 0,
            "waiting": 0,
            "kv_usage": 0.0,
        }
        engine = self.worker.engine
        if engine is not None and self.state in (MemberState.READY, MemberState.DRAINING):
            with contextlib.suppress(Exception):
                info["running"] = engine.num_unfinished_requests()
                info["waiting"] = engine.load.num_waiting
                info["kv_usage"] = engine.load.kv_usage
        return info

    async def drain(self, timeout_s: float = 30.0, settle_s: float = 1.0) -> dict[str, Any]:
        """Stops taking requests and lets the running ones finish, then stops the worker.

        The worker is marked ``draining`` in the registry at once (routers route only to
        ``ready`` workers); after ``settle_s`` (routers refresh their view about twice a second)
        it waits until its engine holds no request or ``timeout_s`` passed, then stops its
        server (in-flight calls still get the rest of the timeout), leaves the registry and
        shuts its engine down. Returns the final status.
        """
        deadline = time.monotonic() + timeout_s
        if self.state == MemberState.STARTING:
            self._start_task.cancel()
            with contextlib.suppress(BaseException):
                await self._start_task
        self.state = MemberState.DRAINING
        self.worker.state = "draining"  # what its heartbeat publishes from now on
        heartbeat = self.worker.heartbeat
        if heartbeat is not None and self.worker.engine is not None:
            try:
                await heartbeat.registry.register(self.worker.info())
            except (aioredis.RedisError, OSError) as exc:
                logger.warning("actor %s: could not publish draining: %s", self.name, exc)
        await asyncio.sleep(min(settle_s, max(0.0, deadline - time.monotonic())))
        engine = self.worker.engine
        while engine is not None and time.monotonic() < deadline:
            try:
                if engine.num_unfinished_requests() == 0:
                    break
            except RuntimeError:
                break
            await asyncio.sleep(0.1)
        status = await self.status()
        if self._export_task is not None:
            self._export_task.cancel()
        self.worker.options.drain_timeout_s = max(0.5, deadline - time.monotonic())
        await self.worker.stop()
        logger.info(
            "actor %s: drained (%d request(s) still unfinished at the deadline)",
            self.name,
            status["running"],
        )
        return status

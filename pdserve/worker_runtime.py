"""One worker process: an engine, its gRPC service, its registration in Redis.

``python -m prefill_worker`` and ``python -m decode_worker`` (and ``pdserve worker``) run
:func:`main`. The worker starts its engine, serves its role's service with health and
reflection, registers in Redis with a heartbeat carrying its load, and on SIGTERM/SIGINT marks
itself draining, lets running requests finish (bounded), and leaves the registry.

With ``worker.kv_events`` (the default) the engine publishes its KV-cache events on a ZMQ Unix
socket in a private directory and the worker runs a :class:`~pdserve.index.KVEventIndexer`
that applies them to the Redis prefix-cache index, which the routers read. The worker's index
entries are dropped when it stops (and by the routers' sweep when its registration expires).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import uuid
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis

from kv_transfer import ConnectorSpec, allocate_port
from pdserve.config import PdserveConfig, advertise_host, redis_password
from pdserve.engine import Engine, EngineSpec
from pdserve.index import KVEventIndexer, KVIndexError, RedisIndex, kv_events_ipc_config
from pdserve.models import resolve_model_path
from pdserve.registry import Heartbeat, Registry, WorkerInfo
from pdserve.serving import make_server, set_serving

logger = logging.getLogger(__name__)

__all__ = ["WorkerOptions", "WorkerProcess", "main"]

Role = Literal["prefill", "decode"]
SERVICE_NAMES = {"prefill": "pdserve.v1.PrefillWorker", "decode": "pdserve.v1.DecodeWorker"}


@dataclass
class WorkerOptions:
    """How one worker process runs (the config file plus per-process settings)."""

    role: Role
    config: PdserveConfig
    worker_id: str = ""
    connector: bool = True
    """False: a plain engine without KV transfer (aggregated serving baselines)."""
    drain_timeout_s: float = 30.0


class WorkerProcess:
    """The engine, server and heartbeat of one worker."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        config = options.config
        self.role: Role = options.role
        self.worker_id = options.worker_id or f"{options.role}-{socket.gethostname()}-{os.getpid()}"
        self.host = advertise_host()
        self.grpc_port = config.worker.grpc_port or allocate_port("0.0.0.0")
        self.nixl_port = config.worker.nixl_port or allocate_port("0.0.0.0")
        self.engine: Engine | None = None
        self.server = None
        self.heartbeat: Heartbeat | None = None
        self.redis: aioredis.Redis | None = None
        self.state = "starting"
        self._servicer: object | None = None
        self.indexer: KVEventIndexer | None = None
        self._index: RedisIndex | None = None
        self._indexer_task: asyncio.Task[None] | None = None
        self._kv_events_dir = ""

    def info(self) -> WorkerInfo:
        engine = self.engine
        assert engine is not None
        load = engine.load
        queued = int(getattr(self._servicer, "queued_prefill_tokens", 0))
        return WorkerInfo(
            worker_id=self.worker_id,
            role=self.role,
            endpoint=f"{self.host}:{self.grpc_port}",
            model=engine.spec.served_name,
            compat_hash=engine.compat_hash,
            block_size=engine.block_size,
            max_model_len=engine.max_model_len,
            state=self.state,
            num_running=engine.num_unfinished_requests(),
            num_waiting=load.num_waiting,
            kv_usage=load.kv_usage,
            queued_prefill_tokens=queued,
        )

    async def start(self) -> None:
        config = self.options.config
        model_path = resolve_model_path(config.model.path)
        connector = None
        if self.options.connector:
            from vllm.platforms import current_platform

            connector = ConnectorSpec(
                role=self.role,
                buffer_device="cpu" if current_platform.is_cpu() else "cuda",
                side_channel_host=self.host,
                side_channel_port=self.nixl_port,
            )
        kv_events = None
        if config.worker.kv_events:
            self._kv_events_dir = tempfile.mkdtemp(prefix="pdserve-kv-")
            kv_events = kv_events_ipc_config(self._kv_events_dir)
        self.engine = Engine(
            EngineSpec(
                model_path=str(model_path),
                served_name=config.model.name,
                dtype=config.model.dtype,
                max_model_len=config.model.max_model_len,
                kv_cache_gib=config.worker.kv_cache_gib,
                gpu_memory_utilization=config.worker.gpu_memory_utilization,
                max_num_seqs=config.worker.max_num_seqs,
                connector=connector,
                cpu_threads_bind=config.worker.cpu_threads_bind,
                enforce_eager=config.worker.enforce_eager,
                kv_events=kv_events,
                chunked_prefill=config.worker.chunked_prefill,
            )
        )
        await self.engine.start()
        if not config.redis.url:
            raise ValueError("a worker needs redis.url (or PDSERVE_REDIS_URL) to register")
        self.redis = aioredis.from_url(
            config.redis.url, password=redis_password(), decode_responses=True
        )
        if kv_events is not None:
            await self._start_indexer(kv_events)

        from pdserve.v1 import worker_pb2_grpc

        service = SERVICE_NAMES[self.role]
        server, health = make_server([service], max_message_bytes=config.router.max_message_bytes)
        limit = config.worker.max_queued_requests
        if self.role == "prefill":
            from prefill_worker import PrefillServicer

            prefill = PrefillServicer(self.engine, self.worker_id, max_queued_requests=limit)
            worker_pb2_grpc.add_PrefillWorkerServicer_to_server(prefill, server)
            self._servicer = prefill
        else:
            from decode_worker import DecodeServicer

            decode = DecodeServicer(self.engine, self.worker_id, max_queued_requests=limit)
            worker_pb2_grpc.add_DecodeWorkerServicer_to_server(decode, server)
            self._servicer = decode
        bound = server.add_insecure_port(f"{config.worker.host}:{self.grpc_port}")
        if bound == 0:
            raise OSError(f"cannot bind the worker's gRPC port {self.grpc_port}")
        await server.start()
        await set_serving(health, [service])
        self.server = server

        registry = Registry(self.redis, ttl_s=config.redis.ttl_s)
        self.state = "ready"
        self.heartbeat = Heartbeat(registry, self.info, interval_s=config.redis.heartbeat_s)
        await self.heartbeat.start()
        logger.info(
            "%s worker %s serving on %s:%d (NIXL side channel %d)",
            self.role,
            self.worker_id,
            self.host,
            self.grpc_port,
            self.nixl_port,
        )

    async def _start_indexer(self, kv_events: dict[str, str]) -> None:
        """Starts feeding the engine's KV events into the Redis index."""
        assert self.engine is not None and self.redis is not None
        self._index = RedisIndex(self.redis)
        self.indexer = KVEventIndexer(
            self.worker_id,
            kv_events["endpoint"],
            kv_events["replay_endpoint"],
            self._index,
            self.engine.block_size,
        )
        self.engine.on_prefix_cache_reset.append(self.indexer.engine_cache_reset)
        self._indexer_task = asyncio.create_task(self.indexer.run())
        ready = asyncio.ensure_future(self.indexer.wait_ready())
        done, _ = await asyncio.wait({ready, self._indexer_task}, timeout=10.0)
        if self._indexer_task in done:
            self._indexer_task.result()  # raises what stopped it
        if ready not in done:
            ready.cancel()
            logger.warning("worker %s: the KV-event indexer is slow to start", self.worker_id)

    async def _stop_indexer(self) -> None:
        if self._indexer_task is not None:
            self._indexer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._indexer_task
            self._indexer_task = None
        if self._index is not None:
            try:
                await self._index.clear(self.worker_id)
            except KVIndexError as exc:
                logger.warning(
                    "worker %s: could not clear its index entries: %s", self.worker_id, exc
                )
        if self._kv_events_dir:
            shutil.rmtree(self._kv_events_dir, ignore_errors=True)

    async def stop(self) -> None:
        """Drains: stops taking requests, lets running ones finish (bounded), deregisters."""
        self.state = "draining"
        if self.heartbeat is not None:
            try:
                await self.heartbeat.registry.register(self.info())
            except (aioredis.RedisError, OSError):
                pass
        if self.server is not None:
            await self.server.stop(grace=self.options.drain_timeout_s)
        if self.heartbeat is not None:
            await self.heartbeat.stop(deregister=True)
        await self._stop_indexer()
        if self.redis is not None:
            await self.redis.aclose()
        if self.engine is not None:
            self.engine.shutdown()


async def _serve(options: WorkerOptions) -> int:
    """Runs a worker until SIGTERM/SIGINT (exit code 0) or until its engine dies (1)."""
    worker = WorkerProcess(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await worker.start()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if worker.engine is not None and worker.engine.is_dead:
                logger.error("the engine of %s died; exiting", worker.worker_id)
                return 1
        return 0
    finally:
        await worker.stop()


def build_parser(role: Role) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {role}_worker", description=f"Run one pdserve {role} worker."
    )
    add_worker_arguments(parser)
    return parser


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="pdserve YAML config (default: $PDSERVE_CONFIG)")
    parser.add_argument("--worker-id", default="", help="registry id (default: role-host-pid)")
    parser.add_argument("--redis-url", help="Redis URL (overrides the config)")
    parser.add_argument("--model", help="local model directory (overrides model.path)")
    parser.add_argument("--port", type=int, help="gRPC port (0: any free port)")
    parser.add_argument("--nixl-port", type=int, help="NIXL side-channel port (0: any free port)")
    parser.add_argument("--cpu-bind", help="VLLM_CPU_OMP_THREADS_BIND for the engine, e.g. 0")
    parser.add_argument(
        "--no-kv-transfer",
        action="store_true",
        help="run a plain engine without the KV connector (aggregated baseline)",
    )
    parser.add_argument("--log-level", default="INFO")


def options_from_args(role: Role, args: argparse.Namespace) -> WorkerOptions:
    config = PdserveConfig.load(args.config)
    if args.redis_url:
        config.redis.url = args.redis_url
    if args.model:
        config.model.path = args.model
    if args.port is not None:
        config.worker.grpc_port = args.port
    if args.nixl_port is not None:
        config.worker.nixl_port = args.nixl_port
    if args.cpu_bind:
        config.worker.cpu_threads_bind = args.cpu_bind
    worker_id = args.worker_id or f"{role}-{uuid.uuid4().hex[:8]}"
    return WorkerOptions(
        role=role, config=config, worker_id=worker_id, connector=not args.no_kv_transfer
    )


def main(role: Role, argv: list[str] | None = None) -> None:
    args = build_parser(role).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raise SystemExit(asyncio.run(_serve(options_from_args(role, args))))

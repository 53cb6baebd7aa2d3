"""The operator RPCs both worker roles answer the same way: ``GetStatus`` and
``ResetPrefixCache``."""

from __future__ import annotations

import logging

import grpc

from pdserve.engine import Engine
from pdserve.v1 import worker_pb2

logger = logging.getLogger(__name__)


async def reset_prefix_cache(
    engine: Engine, worker_id: str, context: grpc.aio.ServicerContext
) -> worker_pb2.ResetPrefixCacheResponse:
    """Empties the engine's prefix cache, or answers FAILED_PRECONDITION while it is busy."""
    if not await engine.reset_prefix_cache():
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"worker {worker_id} has {engine.num_unfinished_requests()} requests running; "
            "the prefix cache can only be reset when it is idle (drain it first)",
        )
    logger.info("worker %s: prefix cache reset", worker_id)
    return worker_pb2.ResetPrefixCacheResponse()


def status_message(engine: Engine, worker_id: str, role: str) -> worker_pb2.WorkerStatus:
    load = engine.load
    transfers = engine.transfers.snapshot()
    return worker_pb2.WorkerStatus(
        worker_id=worker_id,
        role=role,
        model=engine.spec.served_name,
        num_running_requests=engine.num_unfinished_requests(),
        num_waiting_requests=load.num_waiting,
        kv_usage=load.kv_usage,
        block_size=engine.block_size,
        max_model_len=engine.max_model_len,
        compat_hash=engine.compat_hash,
        kv_blocks_received=int(transfers["num_blocks"]),
        kv_bytes_received=int(transfers["num_bytes"]),
        kv_transfer_s=float(transfers["transfer_s"]),
        kv_transfers=int(transfers["num_transfers"]),
        kv_releases=int(transfers["num_releases"]),
        prompt_tokens_computed=load.prompt_tokens_computed,
        prompt_tokens_transferred=load.prompt_tokens_transferred,
        prompt_tokens_cached=load.prompt_tokens_local_hit,
    )

"""The DecodeWorker gRPC service around an embedded engine."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from kv_transfer import (
    KVTransferError,
    check_params,
    num_blocks,
    params_to_vllm,
    release_params,
)
from pdserve.engine import Engine
from pdserve.errors import InvalidRequest, Overloaded, PdserveError
from pdserve.sampling import check_sampling
from pdserve.serving import abort_with
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from pdserve.validation import check_prompt_tokens, check_request_id
from pdserve.worker_status import reset_prefix_cache, status_message

logger = logging.getLogger(__name__)

FINISH_REASONS = {
    "stop": generation_pb2.FINISH_REASON_STOP,
    "length": generation_pb2.FINISH_REASON_LENGTH,
}


class DecodeServicer(worker_pb2_grpc.DecodeWorkerServicer):
    """Streams tokens of requests whose prompt KV is pulled from a prefill worker (when the
    request carries transfer parameters) or computed here (decode-only requests)."""

    def __init__(self, engine: Engine, worker_id: str, *, max_queued_requests: int) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.max_queued_requests = max_queued_requests
        self.num_inflight = 0

    async def Decode(
        self, request: worker_pb2.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.DecodeResponse]:
        try:
            check_request_id(request.request_id, required=True)
            rid = request.request_id
            sampling = check_sampling(
                request.sampling,
                default_max_tokens=16,
                vocab_size=self.engine.vocab_size,
                request_id=rid,
            )
            ids = list(request.prompt_token_ids)
            check_prompt_tokens(
                ids,
                vocab_size=self.engine.vocab_size,
                max_model_len=self.engine.max_model_len,
                request_id=rid,
            )
            params = None
            if request.HasField("kv_transfer_params"):
                try:
                    check_params(request.kv_transfer_params, self.engine.compat_hash)
                except KVTransferError as exc:
                    raise InvalidRequest(f"kv_transfer_params: {exc}", request_id=rid) from exc
                params = params_to_vllm(request.kv_transfer_params)
            if self.num_inflight >= self.max_queued_requests:
                raise Overloaded(
                    f"decode worker {self.worker_id} has {self.num_inflight} requests in "
                    "flight; retry later or on another worker",
                    request_id=rid,
                )
        except PdserveError as exc:
            await abort_with(context, exc)
            return
        if params is not None:
            self.engine.transfers.record_request(num_blocks(request.kv_transfer_params))
        self.num_inflight += 1
        sent = False
        try:
            stream = self.engine.generate(rid, ids, sampling, kv_transfer_params=params)
            async with contextlib.aclosing(stream) as outputs:
                async for output in outputs:
                    completion = output.outputs[0]
                    message = worker_pb2.DecodeResponse(
                        text=completion.text, token_ids=list(completion.token_ids)
                    )
                    if output.finished:
                        message.finish_reason = FINISH_REASONS.get(
                            completion.finish_reason or "", generation_pb2.FINISH_REASON_STOP
                        )
                        if completion.stop_reason is not None:
                            message.stop_reason = str(completion.stop_reason)
                        message.num_prompt_tokens = len(ids)
                        message.num_cached_tokens = int(output.num_cached_tokens or 0)
                    sent = True
                    yield message
        except ValueError as exc:  # the engine's own checks of the request
            if sent:
                raise
            await abort_with(
                context,
                InvalidRequest(f"the engine refused the request: {exc}", request_id=rid),
            )
        finally:
            self.num_inflight -= 1

    async def Release(
        self, request: worker_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.ReleaseResponse:
        try:
            check_request_id(request.request_id, required=True)
            if not request.HasField("kv_transfer_params"):
                raise InvalidRequest(
                    "kv_transfer_params is required", request_id=request.request_id
                )
            try:
                check_params(request.kv_transfer_params, self.engine.compat_hash)
            except KVTransferError as exc:
                raise InvalidRequest(
                    f"kv_transfer_params: {exc}", request_id=request.request_id
                ) from exc
        except PdserveError as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc
        await self.engine.release_remote(
            request.request_id, release_params(request.kv_transfer_params)
        )
        logger.debug("[%s] released the prefill side's held blocks", request.request_id)
        return worker_pb2.ReleaseResponse()

    async def GetStatus(
        self, request: worker_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.WorkerStatus:
        return status_message(self.engine, self.worker_id, "decode")

    async def ResetPrefixCache(
        self, request: worker_pb2.ResetPrefixCacheRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.ResetPrefixCacheResponse:
        return await reset_prefix_cache(self.engine, self.worker_id, context)

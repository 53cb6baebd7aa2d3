"""The PrefillWorker gRPC service around an embedded engine."""

from __future__ import annotations

import contextlib
import logging

import grpc

from kv_transfer import num_blocks, params_from_vllm
from pdserve.engine import Engine
from pdserve.errors import InvalidRequest, Overloaded, PdserveError
from pdserve.sampling import Sampling, check_sampling
from pdserve.serving import abort_with
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from pdserve.validation import check_prompt_tokens, check_request_id
from pdserve.worker_status import reset_prefix_cache, status_message

logger = logging.getLogger(__name__)


class PrefillServicer(worker_pb2_grpc.PrefillWorkerServicer):
    """Runs prompts with ``max_tokens=1`` and ``do_remote_decode`` and returns the first token
    and the transfer parameters under which the engine holds the prompt's KV blocks."""

    def __init__(self, engine: Engine, worker_id: str, *, max_queued_requests: int) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.max_queued_requests = max_queued_requests
        self.num_inflight = 0
        self.queued_prefill_tokens = 0

    async def Prefill(
        self, request: worker_pb2.PrefillRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.PrefillResponse:
        try:
            check_request_id(request.request_id, required=True)
            rid = request.request_id
            sampling = check_sampling(
                request.sampling,
                default_max_tokens=1,
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
            if self.num_inflight >= self.max_queued_requests:
                raise Overloaded(
                    f"prefill worker {self.worker_id} has {self.num_inflight} requests in "
                    "flight; retry later or on another worker",
                    request_id=rid,
                )
            return await self._prefill(rid, ids, sampling)
        except PdserveError as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc

    async def _prefill(
        self, rid: str, ids: list[int], sampling: Sampling
    ) -> worker_pb2.PrefillResponse:
        self.num_inflight += 1
        self.queued_prefill_tokens += len(ids)
        final = None
        try:
            stream = self.engine.generate(
                rid, ids, sampling, max_tokens=1, kv_transfer_params={"do_remote_decode": True}
            )
            async with contextlib.aclosing(stream) as outputs:
                async for output in outputs:
                    final = output
        except ValueError as exc:  # the engine's own checks of the request
            raise InvalidRequest(f"the engine refused the request: {exc}", request_id=rid) from exc
        finally:
            self.num_inflight -= 1
            self.queued_prefill_tokens -= len(ids)
        if final is None or not final.outputs or not final.outputs[0].token_ids:
            raise InvalidRequest("the engine produced no token for this prompt", request_id=rid)
        completion = final.outputs[0]
        response = worker_pb2.PrefillResponse(
            request_id=rid,
            first_token_id=int(completion.token_ids[0]),
            first_token_text=completion.text,
            num_cached_tokens=int(final.num_cached_tokens or 0),
        )
        if completion.finish_reason == "stop":
            response.finish_reason = generation_pb2.FINISH_REASON_STOP
            if completion.stop_reason is not None:
                response.stop_reason = str(completion.stop_reason)
        if final.kv_transfer_params:
            response.kv_transfer_params.CopyFrom(
                params_from_vllm(final.kv_transfer_params, self.engine.compat_hash)
            )
        logger.debug(
            "[%s] prefilled %d tokens (%d cached), %d blocks held",
            rid,
            len(ids),
            response.num_cached_tokens,
            num_blocks(response.kv_transfer_params),
        )
        return response

    async def GetStatus(
        self, request: worker_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.WorkerStatus:
        return status_message(self.engine, self.worker_id, "prefill")

    async def ResetPrefixCache(
        self, request: worker_pb2.ResetPrefixCacheRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.ResetPrefixCacheResponse:
        return await reset_prefix_cache(self.engine, self.worker_id, context)

"""Running one request through the workers: prefill, KV handoff, decode, relay.

A disaggregated request goes to a prefill worker (``max_tokens=1``, ``do_remote_decode``),
whose answer carries the first token and the transfer parameters; the first token goes to the
client at once, and the decode worker is called with the same prompt and those parameters. The
decode engine pulls the prompt's KV blocks, samples the first token again (the router gives every
sampled request a seed, so both engines draw the same token) and streams the rest; the router
drops the repeated first token and relays the others. Should the decode side ever draw a
different first token, the router resumes decoding from the token the client already has.

Resumption (token replay) re-sends the prompt plus the tokens already streamed as a decode-only
request with the remaining token budget, so the client's stream continues without duplicated or
missing tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import grpc

from pdserve.errors import NoWorkerAvailable, Overloaded, WorkerFailed
from pdserve.registry import WorkerInfo
from pdserve.sampling import Sampling
from pdserve.v1 import generation_pb2, worker_pb2
from router.selection import Selector
from router.workers import WorkerView

logger = logging.getLogger(__name__)

#: gRPC codes after which another worker may succeed (the worker is gone, refused, or was
#: stopped: a worker that shuts down, or a channel the router closes when the worker's
#: registration expires, ends its calls with CANCELLED).
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)

#: How long a worker that answered RESOURCE_EXHAUSTED is skipped (it is busy, not broken).
_BUSY_EXCLUDE_S = 1.0


@dataclass
class Chunk:
    """A piece of the client's stream."""

    text: str
    token_ids: list[int]
    finish_reason: int = generation_pb2.FINISH_REASON_UNSPECIFIED
    stop_reason: str = ""


@dataclass
class RequestState:
    """What the router knows about a request in flight."""

    request_id: str
    prompt_ids: list[int]
    sampling: Sampling
    model: str
    deadline: float
    """Monotonic time by which the request must be done."""
    emitted: list[int] = field(default_factory=list)
    cached_prompt_tokens: int = 0
    prefill_s: float = 0.0
    prefill_worker: str = ""
    decode_worker: str = ""
    disaggregated: bool = False
    finish_reason: int = generation_pb2.FINISH_REASON_UNSPECIFIED
    stop_reason: str = ""

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()


class Dispatcher:
    """Drives requests through prefill and decode workers."""

    def __init__(self, view: WorkerView, selector: Selector, *, max_resumes: int = 2):
        self.view = view
        self.selector = selector
        self.max_resumes = max_resumes
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, state: RequestState) -> AsyncGenerator[Chunk, None]:
        """Yields the request's chunks; the last one has ``finish_reason`` set."""
        route = await self.selector.select(state)
        prefill: worker_pb2.PrefillResponse | None = None
        if route.prefill is not None:
            prefill = await self._prefill(state, route.prefill, route.alternates)
        if prefill is not None:
            state.disaggregated = True
            first = Chunk(prefill.first_token_text, [prefill.first_token_id])
            state.emitted.append(prefill.first_token_id)
            if prefill.finish_reason or state.sampling.max_tokens == 1:
                # The first token already ends the request: free the held blocks, finish.
                state.finish_reason = prefill.finish_reason or generation_pb2.FINISH_REASON_LENGTH
                state.stop_reason = prefill.stop_reason
                self._release(state, route.decode, prefill)
                first.finish_reason = state.finish_reason
                first.stop_reason = state.stop_reason
                yield first
                return
            try:
                yield first
            except (GeneratorExit, asyncio.CancelledError):
                # The client went away between prefill and decode: the decode side never
                # saw the request, so free the prefill side's held blocks now.
                self._release(state, route.decode, prefill)
                raise
            decode = self._decode(state, route.decode, prefill)
        else:
            decode = self._decode(state, route.decode, None)
        async with contextlib.aclosing(decode) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _prefill(
        self, state: RequestState, worker: WorkerInfo, alternates: list[WorkerInfo]
    ) -> worker_pb2.PrefillResponse | None:
        """The prefill answer, retried once on another prefill worker; None means the
        request falls back to decode-only (the decode worker computes the prompt)."""
        candidates = [worker, *alternates[:1]]
        for attempt, candidate in enumerate(candidates):
            request = worker_pb2.PrefillRequest(
                request_id=f"{state.request_id}-p{attempt}",
                prompt_token_ids=state.prompt_ids,
                sampling=state.sampling.to_proto(),
            )
            started = time.monotonic()
            try:
                with self.view.track(candidate.worker_id, len(state.prompt_ids)):
                    answer: worker_pb2.PrefillResponse = await self.view.prefill_stub(
                        candidate
                    ).Prefill(request, timeout=max(state.remaining_s(), 0.001))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                if exc.code() not in _RETRYABLE:
                    raise WorkerFailed(
                        f"prefill worker {candidate.worker_id} failed: {exc.details()}",
                        request_id=state.request_id,
                    ) from exc
                logger.warning(
                    "[%s] prefill worker %s failed (%s); %s",
                    state.request_id,
                    candidate.worker_id,
                    exc.code().name,
                    "retrying elsewhere" if attempt + 1 < len(candidates) else "decode-only",
                )
                busy = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                self.view.exclude(candidate.worker_id, _BUSY_EXCLUDE_S if busy else 5.0)
                continue
            state.prefill_s = time.monotonic() - started
            state.prefill_worker = candidate.worker_id
            state.cached_prompt_tokens = answer.num_cached_tokens
            return answer
        return None

    async def _decode(
        self,
        state: RequestState,
        worker: WorkerInfo,
        prefill: worker_pb2.PrefillResponse | None,
    ) -> AsyncGenerator[Chunk, None]:
        resumes = 0
        params = prefill.kv_transfer_params if prefill is not None else None
        skip_first = prefill is not None
        skip_chars = len(prefill.first_token_text) if prefill is not None else 0
        while True:
            state.decode_worker = worker.worker_id
            replay = list(state.emitted) if params is None and state.emitted else []
            request = worker_pb2.DecodeRequest(
                request_id=f"{state.request_id}-d{resumes}",
                prompt_token_ids=state.prompt_ids + replay,
                sampling=_budgeted(state.sampling, len(state.emitted) if params is None else 0),
            )
            if params is not None:
                request.kv_transfer_params.CopyFrom(params)
            failure: grpc.aio.AioRpcError | None = None
            restart = False
            received = False
            call = self.view.decode_stub(worker).Decode(
                request, timeout=max(state.remaining_s(), 0.001)
            )
            tracked = self.view.track(
                worker.worker_id, 0 if params is not None else len(request.prompt_token_ids)
            )
            tracked.__enter__()
            try:
                async for message in call:
                    received = True
                    ids = list(message.token_ids)
                    text = message.text
                    if skip_first and ids and prefill is not None:
                        skip_first = False
                        if ids[0] != state.emitted[0]:
                            logger.warning(
                                "[%s] decode drew token %d after prefill's %d; resuming from "
                                "the prefill token",
                                state.request_id,
                                ids[0],
                                state.emitted[0],
                            )
                            restart = True
                            break
                        ids = ids[1:]
                    if skip_chars:
                        # The decode engine's text starts with the first token's text, which the
                        # client already has (its detokenizer may release it over several
                        # deltas while it checks for stop strings).
                        dropped = text[:skip_chars]
                        text = text[skip_chars:]
                        skip_chars -= len(dropped)
                    if message.num_prompt_tokens and prefill is None and resumes == 0:
                        state.cached_prompt_tokens = message.num_cached_tokens
                    state.emitted.extend(ids)
                    chunk = Chunk(text, ids)
                    if message.finish_reason:
                        state.finish_reason = chunk.finish_reason = message.finish_reason
                        state.stop_reason = chunk.stop_reason = message.stop_reason
                        yield chunk
                        return
                    if ids or text:
                        yield chunk
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise WorkerFailed(
                        f"decode worker {worker.worker_id} rejected the request: {exc.details()}",
                        request_id=state.request_id,
                    ) from exc
                failure = exc
            except asyncio.CancelledError:
                if params is not None and not received and prefill is not None:
                    # The decode side may never have seen the request: free the prefill
                    # side's held blocks now rather than at lease expiry.
                    self._release(state, worker, prefill)
                raise
            finally:
                call.cancel()
                tracked.__exit__(None, None, None)
            if failure is None and not restart:
                raise WorkerFailed(
                    f"decode worker {worker.worker_id} ended the stream without a finish reason",
                    request_id=state.request_id,
                )
            # Resume elsewhere (or on the same worker after a first-token mismatch) by
            # replaying the prompt plus the tokens the client already has.
            busy = failure is not None and failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            if failure is not None:
                logger.warning(
                    "[%s] decode worker %s failed after %d tokens (%s): %s",
                    state.request_id,
                    worker.worker_id,
                    len(state.emitted),
                    failure.code().name,
                    failure.details(),
                )
                self.view.exclude(worker.worker_id, _BUSY_EXCLUDE_S if busy else 5.0)
            if params is not None and not received and prefill is not None:
                # The decode side may not have pulled the prompt's blocks; the replay below
                # computes them afresh, so the prefill side must not keep holding them.
                self._release(state, worker, prefill)
            resumes += 1
            if resumes > self.max_resumes:
                raise WorkerFailed(
                    f"request failed on {resumes} decode attempts; {len(state.emitted)} tokens "
                    "were delivered",
                    request_id=state.request_id,
                )
            params = None
            skip_first = False
            skip_chars = 0
            if restart:
                continue
            try:
                worker = await self.selector.select_decode(state)
            except NoWorkerAvailable as exc:
                if busy and not state.emitted:
                    raise Overloaded(
                        f"every decode worker is at its queue limit (last: {worker.worker_id}); "
                        "retry in a few seconds",
                        request_id=state.request_id,
                    ) from exc
                raise WorkerFailed(
                    f"decode worker {worker.worker_id} failed and no other can resume the "
                    f"request; {len(state.emitted)} tokens were delivered",
                    request_id=state.request_id,
                ) from exc

    def _release(
        self, state: RequestState, decode: WorkerInfo, prefill: worker_pb2.PrefillResponse
    ) -> None:
        """Frees, in the background, the blocks a prefill engine holds for a pull that will
        not happen."""
        if not prefill.HasField("kv_transfer_params"):
            return
        request = worker_pb2.ReleaseRequest(
            request_id=f"{state.request_id}-r", kv_transfer_params=prefill.kv_transfer_params
        )
        # Any decode engine can tell the prefill engine to free the blocks: if the chosen
        # one does not answer (it may be the worker that just failed), ask the others.
        others = [
            w for w in self.view.ready("decode", state.model) if w.worker_id != decode.worker_id
        ]

        async def release() -> None:
            for worker in [decode, *others]:
                try:
                    await self.view.decode_stub(worker).Release(request, timeout=5.0)
                    return
                except grpc.aio.AioRpcError as exc:
                    logger.warning(
                        "[%s] releasing the prefill side's blocks through %s failed (%s)",
                        state.request_id,
                        worker.worker_id,
                        exc.code().name,
                    )
            logger.warning(
                "[%s] no decode worker could release the prefill side's blocks; they are "
                "freed when their lease expires",
                state.request_id,
            )

        task = asyncio.create_task(release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _budgeted(sampling: Sampling, already: int) -> generation_pb2.SamplingParams:
    msg = sampling.to_proto()
    msg.max_tokens = max(1, sampling.max_tokens - already)
    return msg

"""The benchmark driver: sends a workload to one or more routers on an arrival schedule.

Each session starts at its scheduled offset (at most ``max_concurrency`` sessions per target are
in flight; a session waiting for a slot is sent when one frees up). Its turns are sent one after
the other over ``pdserve.v1.Generation/Generate``, with ``ignore_eos`` and ``max_tokens`` set to
the turn's output length, and every streamed message's arrival is timed with
``time.perf_counter``. A failed turn ends its session: the later turns are recorded with status
``SKIPPED``, since their prompts would have contained its output.

Example::

    sessions = random_workload(200, input_len=1024, output_len=128)
    result = await run_benchmark(Target.parse("disagg=localhost:50051"), sessions,
                                 ArrivalProcess(rate=8.0, seed=0), RunOptions())
    summary = summarize(result.records, result.duration_s, parse_slo("ttft=500ms,tpot=50ms"))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio

from pdserve.bench.arrivals import ArrivalProcess
from pdserve.bench.record import RequestRecord
from pdserve.bench.workloads import Prompt, Session, extend_prompt
from pdserve.v1 import generation_pb2, generation_pb2_grpc

__all__ = [
    "STATUS_CLIENT_ERROR",
    "STATUS_SKIPPED",
    "OnRecord",
    "RunOptions",
    "RunResult",
    "Target",
    "TargetUnavailableError",
    "run_benchmark",
    "run_interleaved",
]

logger = logging.getLogger(__name__)

STATUS_SKIPPED = "SKIPPED"
"""Status of a turn that was not sent because an earlier turn of its session failed."""
STATUS_CLIENT_ERROR = "CLIENT_ERROR"
"""Status of a request that failed in the client rather than with a gRPC status."""

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

OnRecord = Callable[[RequestRecord], None]


class TargetUnavailableError(ConnectionError):
    """A target could not be connected to before the run started."""


@dataclass(frozen=True)
class Target:
    """A router to benchmark: a short name for tables and plots, and its gRPC address."""

    name: str
    address: str
    """``host:port`` of the router's gRPC endpoint."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"target name {self.name!r} may use only letters, digits, _ . -")
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"target address {self.address!r} is not host:port")

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parses ``name=host:port``, or ``host:port`` (named after its address).

        Raises:
            ValueError: the name or the address is malformed.
        """
        name, sep, address = text.partition("=")
        if not sep:
            address = text
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
        return cls(name.strip(), address.strip())


@dataclass(frozen=True)
class RunOptions:
    """How requests are sent."""

    timeout_s: float = 600.0
    """Deadline of each request; a request past it is recorded as ``DEADLINE_EXCEEDED``."""
    max_concurrency: int | None = None
    """Most sessions in flight per target; None is unlimited."""
    model: str = ""
    """``GenerateRequest.model``; empty means the router's default model."""
    temperature: float | None = None
    """Sampling temperature; None leaves the router's default."""
    num_channels: int = 1
    """gRPC connections per target; requests are spread over them round-robin."""
    connect_timeout_s: float = 10.0
    """How long to wait for each target to accept a connection before the run."""
    warmup_requests: int = 0
    """Requests sent one at a time to each target before the run, not recorded."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {self.num_channels}")
        if not self.connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {self.connect_timeout_s}")
        if self.warmup_requests < 0:
            raise ValueError(f"warmup_requests must be >= 0, got {self.warmup_requests}")


@dataclass
class RunResult:
    """The records of one run and its wall-clock span."""

    records: list[RequestRecord]
    """Every request of the run, in send order."""
    duration_s: float
    """From the first scheduled send to the last request's end."""
    started_at: float
    """Unix time of the run's start."""
    targets: list[Target] = field(default_factory=list)

    def for_target(self, name: str) -> list[RequestRecord]:
        """The records of the target called ``name``."""
        return [r for r in self.records if r.target == name]


@dataclass(frozen=True)
class _Job:
    offset_s: float
    target: Target
    session_index: int


class _Client:
    """The channels, stub round-robin and concurrency slots of one target."""

    def __init__(self, target: Target, options: RunOptions) -> None:
        channel_options = [
            # Separate connections per channel; otherwise gRPC shares one subchannel.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ]
        self.channels = [
            grpc.aio.insecure_channel(target.address, options=channel_options)
            for _ in range(options.num_channels)
        ]
        self.stubs = [generation_pb2_grpc.GenerationStub(ch) for ch in self.channels]
        self.slots: asyncio.Semaphore | None = (
            asyncio.Semaphore(options.max_concurrency) if options.max_concurrency else None
        )
        self._next = 0

    def stub(self) -> generation_pb2_grpc.GenerationStub:
        self._next = (self._next + 1) % len(self.stubs)
        return self.stubs[self._next]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def _build_request(prompt: Prompt, output_len: int, request_id: str,
                   options: RunOptions) -> generation_pb2.GenerateRequest:
    sampling = generation_pb2.SamplingParams(max_tokens=output_len, ignore_eos=True)
    if options.temperature is not None:
        sampling.temperature = options.temperature
    request = generation_pb2.GenerateRequest(
        model=options.model, sampling=sampling, request_id=request_id
    )
    if prompt.ids is not None:
        request.token_ids.ids.extend(prompt.ids)
    else:
        assert prompt.text is not None
        request.prompt = prompt.text
    return request


async def _send(stub: generation_pb2_grpc.GenerationStub, record: RequestRecord,
                request: generation_pb2.GenerateRequest, options: RunOptions,
                t0: float) -> tuple[list[int], str]:
    """Sends one request, filling ``record``; returns the output token ids and text."""
    out_ids: list[int] = []
    out_text: list[str] = []
    record.send_s = time.perf_counter() - t0
    try:
        call = stub.Generate(request, timeout=options.timeout_s)
        async for msg in call:
            now = time.perf_counter() - t0
            record.end_s = now
            if msg.token_ids or msg.text:
                record.chunk_s.append(now)
                record.chunk_tokens.append(len(msg.token_ids))
                out_ids.extend(msg.token_ids)
                out_text.append(msg.text)
            if msg.finish_reason:
                record.finish_reason = generation_pb2.FinishReason.Name(msg.finish_reason)
            if msg.HasField("usage"):
                record.completion_tokens = msg.usage.completion_tokens
                record.cached_prompt_tokens = msg.usage.cached_prompt_tokens
                if msg.usage.prompt_tokens:
                    record.prompt_tokens = msg.usage.prompt_tokens
            if msg.HasField("timing"):
                t = msg.timing
                record.server_timing = {
                    "ttft_s": t.ttft_s, "e2e_s": t.e2e_s, "prefill_s": t.prefill_s,
                    "disaggregated": t.disaggregated, "prefill_worker": t.prefill_worker,
                    "decode_worker": t.decode_worker,
                }
        if not record.finish_reason:
            record.error = "the stream ended without a finish reason"
        elif not record.chunk_s:
            record.error = "the stream ended without any token"
    except grpc.aio.AioRpcError as exc:
        record.end_s = time.perf_counter() - t0
        record.status = exc.code().name
        record.error = exc.details() or ""
    except Exception as exc:  # a benchmark records client-side failures instead of dying
        record.end_s = time.perf_counter() - t0
        record.status = STATUS_CLIENT_ERROR
        record.error = f"{type(exc).__name__}: {exc}"
    if not record.success:
        logger.debug("request %s failed: %s %s", record.request_id, record.status, record.error)
    return out_ids, "".join(out_text)


async def _run_session(job_index: int, job: _Job, session: Session, client: _Client,
                       options: RunOptions, t0: float, run_tag: str,
                       on_record: OnRecord | None) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    slot = client.slots if client.slots is not None else contextlib.nullcontext()
    async with slot:
        prompt: Prompt | None = None
        out_ids: list[int] = []
        out_text = ""
        failed = False
        for turn_index, turn in enumerate(session.turns):
            prompt = (turn.prompt if prompt is None
                      else extend_prompt(prompt, out_ids, out_text, turn.prompt))
            record = RequestRecord(
                target=job.target.name, session=job.session_index, turn=turn_index,
                request_id=f"bench-{run_tag}-{job_index}-{turn_index}",
                output_len=turn.output_len, prompt_len=prompt.num_tokens,
                tenant=turn.tenant, scheduled_s=job.offset_s,
                prompt_tokens=prompt.num_tokens or 0,
            )
            if failed:
                record.send_s = record.end_s = time.perf_counter() - t0
                record.status = STATUS_SKIPPED
                record.error = "an earlier turn of the session failed"
            else:
                request = _build_request(prompt, turn.output_len, record.request_id, options)
                out_ids, out_text = await _send(client.stub(), record, request, options, t0)
                failed = not record.success
            records.append(record)
            if on_record is not None:
                on_record(record)
    return records


async def _connect(clients: dict[str, _Client], targets: Sequence[Target],
                   timeout_s: float) -> None:
    for target in targets:
        try:
            await asyncio.wait_for(clients[target.name].channels[0].channel_ready(), timeout_s)
        except TimeoutError as exc:
            raise TargetUnavailableError(
                f"target {target.name} ({target.address}) did not accept a connection "
                f"within {timeout_s:g}s"
            ) from exc


async def _warm_up(clients: dict[str, _Client], targets: Sequence[Target],
                   sessions: Sequence[Session], options: RunOptions) -> None:
    for target in targets:
        for i in range(options.warmup_requests):
            turn = sessions[i % len(sessions)].turns[0]
            record = RequestRecord(target=target.name, session=-1, turn=0,
                                   request_id=f"bench-warmup-{uuid.uuid4().hex[:8]}-{i}",
                                   output_len=turn.output_len)
            request = _build_request(turn.prompt, turn.output_len, record.request_id, options)
            await _send(clients[target.name].stub(), record, request, options,
                        time.perf_counter())
            if not record.success:
                logger.warning("warm-up request to %s failed: %s %s", target.name,
                               record.status, record.error)


async def _run_jobs(targets: Sequence[Target], jobs: Sequence[_Job], sessions: Sequence[Session],
                    options: RunOptions, on_record: OnRecord | None) -> RunResult:
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"target names must be unique, got {names}")
    clients = {t.name: _Client(t, options) for t in targets}
    tasks: list[asyncio.Task[list[RequestRecord]]] = []
    run_tag = uuid.uuid4().hex[:8]
    try:
        await _connect(clients, targets, options.connect_timeout_s)
        await _warm_up(clients, targets, sessions, options)
        started_at = time.time()
        t0 = time.perf_counter()
        for job_index, job in enumerate(jobs):
            delay = t0 + job.offset_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_run_session(
                job_index, job, sessions[job.session_index], clients[job.target.name],
                options, t0, run_tag, on_record,
            )))
        results = await asyncio.gather(*tasks)
        duration_s = time.perf_counter() - t0
    finally:
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for client in clients.values():
            await client.close()
    records = sorted((r for rs in results for r in rs), key=lambda r: r.send_s)
    return RunResult(records, duration_s, started_at, list(targets))


async def run_benchmark(target: Target, sessions: Sequence[Session], arrivals: ArrivalProcess,
                        options: RunOptions | None = None,
                        on_record: OnRecord | None = None) -> RunResult:
    """Sends ``sessions`` to ``target``, session ``i`` at the ``i``-th arrival of ``arrivals``.

    ``on_record`` is called with each request's record as soon as the request ends.

    Raises:
        TargetUnavailableError: the target does not accept a connection.
        ValueError: ``sessions`` is empty.
    """
    if not sessions:
        raise ValueError("the workload has no sessions")
    offsets = arrivals.offsets(len(sessions))
    jobs = [_Job(off, target, i) for i, off in enumerate(offsets)]
    return await _run_jobs([target], jobs, sessions, options or RunOptions(), on_record)


async def run_interleaved(targets: Sequence[Target], sessions: Sequence[Session],
                          arrivals: ArrivalProcess, options: RunOptions | None = None,
                          on_record: OnRecord | None = None) -> RunResult:
    """Sends every session to every target, alternating targets along one arrival schedule.

    The merged schedule has ``len(targets) * len(sessions)`` arrivals at ``len(targets)`` times
    the rate of ``arrivals``, so that each target sees the rate of ``arrivals``; arrival ``m`` goes
    to target ``m % len(targets)`` with session ``m // len(targets)``. Every target thus gets the
    same sessions in the same order, and slow drifts of the environment hit all targets alike.

    Raises:
        TargetUnavailableError: a target does not accept a connection.
        ValueError: no target, duplicate target names, or no sessions.
    """
    if not targets:
        raise ValueError("no target to benchmark")
    if not sessions:
        raise ValueError("the workload has no sessions")
    k = len(targets)
    merged = ArrivalProcess(arrivals.rate * k, arrivals.burstiness, arrivals.seed,
                            arrivals.normalize)
    offsets = merged.offsets(k * len(sessions))
    jobs = [_Job(off, targets[m % k], m // k) for m, off in enumerate(offsets)]
    return await _run_jobs(targets, jobs, sessions, options or RunOptions(), on_record)

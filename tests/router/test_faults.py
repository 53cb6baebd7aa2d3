"""Faults, cancellation and overload against real processes: a router, two prefill and two
decode workers (vLLM CPU, NIXL over loopback) and redis-server, on one cluster of this module.

The tests run in order; each leaves the cluster whole (or says what it took away) and checks
afterwards that no engine runs a request or holds KV blocks (``GetStatus``: running requests
and KV usage back to zero, polled with a deadline) and that no process was orphaned.

To stop a request at a chosen phase, a test freezes an engine's core process (SIGSTOP): the
worker's gRPC server keeps answering and its engine front end accepts the request, but no
engine step runs until SIGCONT. "Mid-prefill" is a prefill worker whose engine holds the
request; "between prefill and decode" is a decode worker whose engine has not started it.

Greedy outputs (temperature 0, ignore_eos) are compared with a fault-free run of the same
prompt on the same cluster, made first.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import psutil
import pytest
import redis
from polling import wait_until

from kv_transfer import allocate_port
from pdserve.config import PdserveConfig
from pdserve.launcher import ClusterSpec, LocalCluster, start_redis
from pdserve.v1 import generation_pb2, generation_pb2_grpc, worker_pb2, worker_pb2_grpc

pytestmark = pytest.mark.engine

ROUTER_MAX_CONCURRENT = 4
WORKER_MAX_QUEUED = 3
REQUEST_TIMEOUT_S = 45.0
IDLE_TIMEOUT_S = 25.0
"""How long held blocks may take to be freed: under the 30 s KV lease."""


def _tokens(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 40_000) for _ in range(length)]


LONG_PROMPT = _tokens(900, 11)
FRESH_LONG_PROMPT = _tokens(900, 21)
"""Seen by no engine before the prefill-kill test (so routing disaggregates it)."""
HELD_PROMPT = _tokens(300, 22)
STREAM_PROMPT = _tokens(200, 12)
SHORT_PROMPT = _tokens(40, 13)
STREAM_TOKENS = 150


# -- the cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults(
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
    make_engine_config: Callable[[Path], PdserveConfig],
) -> Iterator[LocalCluster]:
    config = make_engine_config(tiny_model)
    config.router.max_concurrent_requests = ROUTER_MAX_CONCURRENT
    config.router.request_timeout_s = REQUEST_TIMEOUT_S
    config.worker.max_queued_requests = WORKER_MAX_QUEUED
    spec = ClusterSpec(
        config=config,
        num_prefill=2,
        num_decode=2,
        router_port=allocate_port("127.0.0.1"),
        router_http_port=0,
        cpu_bind=True,
        log_dir=tmp_path_factory.mktemp("fault-cluster-logs"),
    )
    with LocalCluster(spec) as running:
        yield running
        children = [(name, psutil.Process(p.pid)) for name, p in running.procs if p.poll() is None]
        engines = [e for _, c in children for e in c.children(recursive=True)]
    for name, child in [*children, *((f"engine process {e.pid}", e) for e in engines)]:
        _wait_gone(child, f"{name} (pid {child.pid}) outlived the cluster")


@pytest.fixture(scope="module")
def fault_free(faults: LocalCluster) -> dict[str, list[int]]:
    """Fault-free greedy outputs of the prompts the tests use."""
    out: dict[str, list[int]] = {}
    with grpc.insecure_channel(faults.router_address) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        for name, prompt, n in [
            ("long", LONG_PROMPT, 16),
            ("stream", STREAM_PROMPT, STREAM_TOKENS),
            ("short", SHORT_PROMPT, 16),
        ]:
            ids: list[int] = []
            for message in stub.Generate(_request(prompt, n), timeout=REQUEST_TIMEOUT_S):
                ids.extend(message.token_ids)
            assert len(ids) == n
            out[name] = ids
    return out


def _request(
    prompt: list[int], max_tokens: int, request_id: str = ""
) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest(request_id=request_id)
    request.token_ids.ids.extend(prompt)
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0
    request.sampling.ignore_eos = True
    return request


@contextlib.asynccontextmanager
async def _router(cluster: LocalCluster) -> AsyncIterator[generation_pb2_grpc.GenerationStub]:
    async with grpc.aio.insecure_channel(cluster.router_address) as channel:
        yield generation_pb2_grpc.GenerationStub(channel)


# -- processes --------------------------------------------------------------------------------


def _proc(cluster: LocalCluster, name: str) -> psutil.Process:
    return psutil.Process(dict(cluster.procs)[name].pid)


def _descendants(cluster: LocalCluster, name: str) -> list[psutil.Process]:
    return _proc(cluster, name).children(recursive=True)


@contextlib.contextmanager
def frozen_engines(cluster: LocalCluster, *names: str) -> Iterator[None]:
    """Stops the engine processes (not the gRPC front ends, nor the watchdog that must reap the
    engines of a worker killed meanwhile) of ``names`` while the block runs."""
    stopped = [
        p for name in names for p in _descendants(cluster, name) if p.name().startswith("VLLM")
    ]
    assert stopped, f"no engine processes under {names}"
    for p in stopped:
        p.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for p in stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGCONT)


def _live_workers(cluster: LocalCluster) -> list[str]:
    return [
        name
        for name, proc in cluster.procs
        if name.startswith(("prefill", "decode")) and proc.poll() is None
    ]


def _status(cluster: LocalCluster, worker_id: str) -> worker_pb2.WorkerStatus:
    endpoint = cluster.worker_endpoints[worker_id]
    with grpc.insecure_channel(endpoint) as channel:
        stub: worker_pb2_grpc.PrefillWorkerStub | worker_pb2_grpc.DecodeWorkerStub
        if worker_id.startswith("prefill"):
            stub = worker_pb2_grpc.PrefillWorkerStub(channel)
        else:
            stub = worker_pb2_grpc.DecodeWorkerStub(channel)
        return stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=10)


async def assert_idle(cluster: LocalCluster, timeout_s: float = IDLE_TIMEOUT_S) -> None:
    """Every live worker's engine runs no request and holds no KV block (within the deadline:
    KV usage is reported at the engine's next step)."""
    busy: dict[str, tuple[int, float]] = {}

    def idle() -> bool:
        busy.clear()
        for worker_id in _live_workers(cluster):
            status = _status(cluster, worker_id)
            if status.num_running_requests or status.kv_usage > 0:
                busy[worker_id] = (status.num_running_requests, status.kv_usage)
        return not busy

    await wait_until(
        idle, timeout_s, lambda: f"idle engines (busy: worker -> running, kv_usage: {busy})"
    )


def _wait_gone(process: psutil.Process, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(psutil.NoSuchProcess):
        while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, what
            time.sleep(0.1)


def _wait_deregistered(cluster: LocalCluster, worker_id: str, timeout_s: float) -> None:
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    deadline = time.monotonic() + timeout_s
    try:
        while client.exists(f"pdserve:worker:{worker_id}"):
            assert time.monotonic() < deadline, f"{worker_id} still registered after {timeout_s} s"
            time.sleep(0.1)
    finally:
        client.close()


def assert_no_orphans(cluster: LocalCluster, gone: list[psutil.Process]) -> None:
    """Every child of the cluster is alive or reaped; the processes in ``gone`` have exited."""
    for name, proc in cluster.procs:
        if proc.poll() is None:
            assert psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED, name
    for p in gone:
        _wait_gone(p, f"process {p.pid} was orphaned")


async def _running_on(cluster: LocalCluster, role: str, timeout_s: float = 10) -> str:
    """The worker of ``role`` whose engine holds a request (polled)."""
    found: list[str] = []

    def holds() -> bool:
        found[:] = [
            w
            for w in _live_workers(cluster)
            if w.startswith(role) and _status(cluster, w).num_running_requests > 0
        ]
        return bool(found)

    await wait_until(holds, timeout_s, f"a {role} engine to hold the request")
    return found[0]


def _log_mentions(cluster: LocalCluster, name: str, text: str) -> bool:
    return text in (cluster.log_dir / f"{name}.log").read_text(errors="replace")


# -- tests ------------------------------------------------------------------------------------


async def test_reference_runs_leave_engines_idle(
    faults: LocalCluster, fault_free: dict[str, list[int]]
) -> None:
    assert len(fault_free["stream"]) == STREAM_TOKENS
    await assert_idle(faults)


async def test_bad_input_at_internal_edges(faults: LocalCluster) -> None:
    vocab = 49152
    p_endpoint = faults.worker_endpoints["prefill-0"]
    d_endpoint = faults.worker_endpoints["decode-0"]
    cases: list[tuple[str, object, str]] = [
        ("prefill", worker_pb2.PrefillRequest(prompt_token_ids=[1, 2]), "request_id"),
        ("prefill", worker_pb2.PrefillRequest(request_id="x"), "prompt_token_ids"),
        (
            "prefill",
            worker_pb2.PrefillRequest(request_id="x", prompt_token_ids=[vocab + 5]),
            "vocabulary",
        ),
        (
            "prefill",
            worker_pb2.PrefillRequest(request_id="x", prompt_token_ids=[1] * 5000),
            "context",
        ),
        (
            "decode",
            worker_pb2.DecodeRequest(
                request_id="x",
                prompt_token_ids=[1, 2],
                sampling=generation_pb2.SamplingParams(top_p=0),
            ),
            "top_p",
        ),
        ("decode", worker_pb2.DecodeRequest(request_id="\x00bad", prompt_token_ids=[1]), "id"),
        (
            "release",
            worker_pb2.ReleaseRequest(request_id="x"),
            "kv_transfer_params",
        ),
    ]
    async with (
        grpc.aio.insecure_channel(p_endpoint) as p_channel,
        grpc.aio.insecure_channel(d_endpoint) as d_channel,
    ):
        prefill = worker_pb2_grpc.PrefillWorkerStub(p_channel)
        decode = worker_pb2_grpc.DecodeWorkerStub(d_channel)
        for kind, message, needle in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                if kind == "prefill":
                    await prefill.Prefill(message, timeout=10)
                elif kind == "release":
                    await decode.Release(message, timeout=10)
                else:
                    async for _ in decode.Decode(message, timeout=10):
                        pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (kind, message)
            assert needle in (info.value.details() or ""), info.value.details()
    await assert_idle(faults)


async def test_cancel_before_prefill(faults: LocalCluster) -> None:
    async with _router(faults) as stub:
        for _ in range(3):
            call = stub.Generate(_request(LONG_PROMPT, 16), timeout=30)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                async for _ in call:
                    pass
    await assert_idle(faults)


async def test_cancel_during_prefill(faults: LocalCluster) -> None:
    async with _router(faults) as stub:
        with frozen_engines(faults, "prefill-0", "prefill-1"):
            call = stub.Generate(_request(LONG_PROMPT, 16), timeout=60)
            await _running_on(faults, "prefill")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                async for _ in call:
                    pass
    await assert_idle(faults)


async def test_cancel_between_prefill_and_decode_frees_held_blocks(
    faults: LocalCluster,
) -> None:
    async with _router(faults) as stub:
        with frozen_engines(faults, "decode-0", "decode-1"):
            call = stub.Generate(_request(LONG_PROMPT, 16), timeout=60)
            first = await call.read()  # the prefill's first token, sent before decode starts
            assert isinstance(first, generation_pb2.GenerateResponse)
            assert len(first.token_ids) == 1
            await _running_on(faults, "decode")
            # The prefill engine holds the prompt's blocks for the decode side to pull.
            assert max(_status(faults, w).kv_usage for w in ("prefill-0", "prefill-1")) > 0
            call.cancel()
        # Freed at once (release), not when the 30 s lease runs out.
        await assert_idle(faults)


async def test_cancel_mid_stream(faults: LocalCluster, fault_free: dict[str, list[int]]) -> None:
    async with _router(faults) as stub:
        call = stub.Generate(_request(STREAM_PROMPT, STREAM_TOKENS), timeout=60)
        ids: list[int] = []
        async for message in call:
            ids.extend(message.token_ids)
            if len(ids) >= 20:
                break
        call.cancel()
    assert ids == fault_free["stream"][: len(ids)]
    await assert_idle(faults)


async def test_client_deadline_during_prefill(faults: LocalCluster) -> None:
    async with _router(faults) as stub:
        with frozen_engines(faults, "prefill-0", "prefill-1"):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Generate(_request(LONG_PROMPT, 16), timeout=2.0):
                    pass
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The expired request is gone from the engine that held it.
    await assert_idle(faults)


async def test_router_deadline_mid_stream(
    faults: LocalCluster, fault_free: dict[str, list[int]]
) -> None:
    """No client deadline: ``router.request_timeout_s`` ends the request."""
    ids: list[int] = []
    async with _router(faults) as stub:
        call = stub.Generate(_request(STREAM_PROMPT, STREAM_TOKENS))
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while len(ids) < 10:
                message = await call.read()
                assert isinstance(message, generation_pb2.GenerateResponse)
                ids.extend(message.token_ids)
            # Decode stalls (engines frozen) until the router's deadline passes.
            with frozen_engines(faults, "decode-0", "decode-1"):
                while (message := await call.read()) != grpc.aio.EOF:
                    assert isinstance(message, generation_pb2.GenerateResponse)
                    ids.extend(message.token_ids)
    elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "tokens were delivered" in (info.value.details() or "")
    assert REQUEST_TIMEOUT_S - 1 < elapsed < REQUEST_TIMEOUT_S + 10
    assert ids and ids == fault_free["stream"][: len(ids)]
    await assert_idle(faults)


async def test_overload_gets_resource_exhausted_with_retry_hint(faults: LocalCluster) -> None:
    async with _router(faults) as stub:
        with frozen_engines(faults, "decode-0", "decode-1"):
            calls = [
                stub.Generate(_request(_tokens(30, 100 + i), 8), timeout=60)
                for i in range(ROUTER_MAX_CONCURRENT)
            ]
            for call in calls:
                await call.read()  # first token: the request is in flight

            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Generate(_request(SHORT_PROMPT, 4), timeout=10):
                    pass
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers = dict(info.value.trailing_metadata() or ())
            assert int(trailers["retry-after-ms"]) > 0

            for call in calls:
                call.cancel()
    # These requests are cancelled right after the prefill's first token, and on this fresh
    # cluster their Release goes through a decode engine that has never pulled from those
    # prefill engines: the first notification is lost while the engines connect, and the
    # decode worker's repeat must free the blocks well before the lease (docs/faults.md).
    await assert_idle(faults)


async def test_a_worker_bounds_its_own_queue(faults: LocalCluster) -> None:
    """The internal edge: a decode worker takes ``max_queued_requests`` and refuses the rest
    at once with RESOURCE_EXHAUSTED and a retry hint (whoever calls it, router or not)."""
    extra = 2
    with frozen_engines(faults, "decode-0"):
        async with grpc.aio.insecure_channel(faults.worker_endpoints["decode-0"]) as channel:
            stub = worker_pb2_grpc.DecodeWorkerStub(channel)
            calls = [
                stub.Decode(
                    worker_pb2.DecodeRequest(
                        request_id=f"direct-{i}",
                        prompt_token_ids=SHORT_PROMPT,
                        sampling=generation_pb2.SamplingParams(max_tokens=2),
                    ),
                    timeout=60,
                )
                for i in range(WORKER_MAX_QUEUED + extra)
            ]
            codes = {asyncio.ensure_future(c.code()): c for c in calls}
            done: set[asyncio.Future[grpc.StatusCode]] = set()
            deadline = time.monotonic() + 30
            while len(done) < extra and time.monotonic() < deadline:
                finished, _ = await asyncio.wait(
                    set(codes) - done, timeout=deadline - time.monotonic(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                done |= finished
            try:
                # The accepted ones wait for the frozen engine; only the surplus has ended.
                assert len(done) == extra, f"{len(done)} of {len(calls)} calls ended"
                for future in done:
                    call = codes[future]
                    assert future.result() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    details = await call.details()
                    assert f"{WORKER_MAX_QUEUED} requests in flight" in details, details
                    trailers = dict(await call.trailing_metadata() or ())
                    assert int(trailers["retry-after-ms"]) > 0
            finally:
                for call in calls:
                    call.cancel()
                await asyncio.gather(*codes, return_exceptions=True)
    await assert_idle(faults)


async def test_redis_restart(faults: LocalCluster, fault_free: dict[str, list[int]]) -> None:
    port = int(faults.redis_url.rsplit(":", 1)[1].split("/")[0])
    proc = dict(faults.procs)["redis"]
    proc.kill()
    proc.wait()
    async with _router(faults) as stub:
        # Without Redis the router routes on its last view of the fleet.
        ids = [
            t
            async for m in stub.Generate(_request(SHORT_PROMPT, 16), timeout=60)
            for t in m.token_ids
        ]
        assert ids == fault_free["short"]

        new_proc, _ = start_redis(faults.log_dir / "redis.log", port=port)
        faults.procs = [(n, new_proc if n == "redis" else p) for n, p in faults.procs]
        client = redis.Redis.from_url(faults.redis_url, decode_responses=True)

        def registered() -> bool:
            return all(
                client.hget(f"pdserve:worker:{w}", "state") == "ready"
                for w in _live_workers(faults)
            )

        await wait_until(registered, 30, "every worker to register again in the new Redis")
        client.close()
        ids = [
            t
            async for m in stub.Generate(_request(SHORT_PROMPT, 16), timeout=60)
            for t in m.token_ids
        ]
        assert ids == fault_free["short"]
    await assert_idle(faults)


async def test_prefill_worker_killed_mid_prefill(
    faults: LocalCluster, fault_free: dict[str, list[int]]
) -> None:
    """kill -9 of the prefill worker that holds the request: the router retries on the other
    prefill worker; the output equals the fault-free run. Then the KV that the dead worker
    handed out earlier cannot be pulled: the decode side recomputes it and answers right.
    The worker leaves routing when its registration expires and rejoins when restarted."""
    # Blocks each prefill worker holds for a pull; the dead one's pull will fail.
    held: dict[str, worker_pb2.PrefillResponse] = {}
    for worker_id in ("prefill-0", "prefill-1"):
        async with grpc.aio.insecure_channel(faults.worker_endpoints[worker_id]) as channel:
            held[worker_id] = await worker_pb2_grpc.PrefillWorkerStub(channel).Prefill(
                worker_pb2.PrefillRequest(
                    request_id=f"held-by-{worker_id}",
                    prompt_token_ids=HELD_PROMPT,
                    sampling=generation_pb2.SamplingParams(temperature=0, ignore_eos=True),
                ),
                timeout=30,
            )
    engine_procs = {w: _descendants(faults, w) for w in ("prefill-0", "prefill-1")}
    async with _router(faults) as stub:
        call = stub.Generate(_request(FRESH_LONG_PROMPT, 16), timeout=60)
        with frozen_engines(faults, "prefill-0", "prefill-1"):
            victim = await _running_on(faults, "prefill")
            dict(faults.procs)[victim].kill()
            dict(faults.procs)[victim].wait()
        survivor = "prefill-1" if victim == "prefill-0" else "prefill-0"
        ids: list[int] = []
        last = generation_pb2.GenerateResponse()
        async for message in call:
            ids.extend(message.token_ids)
            last = message
    assert len(ids) == 16
    assert last.timing.prefill_worker == survivor or not last.timing.disaggregated
    assert _log_mentions(faults, "router", f"prefill worker {victim} failed")
    assert_no_orphans(faults, engine_procs[victim])

    # The survivor's held blocks: released through any decode worker, at once.
    async with grpc.aio.insecure_channel(faults.worker_endpoints["decode-1"]) as channel:
        await worker_pb2_grpc.DecodeWorkerStub(channel).Release(
            worker_pb2.ReleaseRequest(
                request_id="release-held", kv_transfer_params=held[survivor].kv_transfer_params
            ),
            timeout=30,
        )

    # KV pull from the dead worker fails; kv_load_failure_policy=recompute computes it here.
    async with grpc.aio.insecure_channel(faults.worker_endpoints["decode-0"]) as channel:
        decode = worker_pb2_grpc.DecodeWorkerStub(channel)
        request = worker_pb2.DecodeRequest(
            request_id="pull-from-the-dead",
            prompt_token_ids=HELD_PROMPT,
            sampling=generation_pb2.SamplingParams(max_tokens=16, temperature=0, ignore_eos=True),
            kv_transfer_params=held[victim].kv_transfer_params,
        )
        pulled = [t async for m in decode.Decode(request, timeout=60) for t in m.token_ids]

    # Both outputs equal fault-free runs of the same prompts (made now, on healthy workers).
    async with _router(faults) as stub:
        for prompt, got in [(FRESH_LONG_PROMPT, ids), (HELD_PROMPT, pulled)]:
            expected = [
                t
                async for m in stub.Generate(_request(prompt, 16), timeout=60)
                for t in m.token_ids
            ]
            assert got == expected

    # Liveness: out of routing within the registration TTL, back in after a restart.
    async with grpc.aio.insecure_channel(faults.router_address) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)

        async def num_prefill() -> int:
            models = await stub.ListModels(generation_pb2.ListModelsRequest(), timeout=5)
            return int(models.models[0].num_prefill_workers)

        async def one_left() -> bool:
            return await num_prefill() == 1

        await wait_until(one_left, faults.spec.config.redis.ttl_s + 3, f"{victim} to leave")
        await asyncio.to_thread(
            _wait_deregistered, faults, victim, faults.spec.config.redis.ttl_s + 2
        )
        await asyncio.to_thread(faults.respawn, victim)

        async def two_again() -> bool:
            return await num_prefill() == 2

        await wait_until(two_again, 5, f"{victim} to rejoin routing")
    await assert_idle(faults)


async def test_decode_worker_killed_mid_stream_resumes_elsewhere(
    faults: LocalCluster, fault_free: dict[str, list[int]]
) -> None:
    async with _router(faults) as stub:
        call = stub.Generate(_request(STREAM_PROMPT, STREAM_TOKENS), timeout=120)
        ids: list[int] = []
        last = generation_pb2.GenerateResponse()
        killed = ""
        gone: list[psutil.Process] = []
        async for message in call:
            ids.extend(message.token_ids)
            last = message
            if not killed and len(ids) >= 20:
                killed = await _running_on(faults, "decode")
                gone = _descendants(faults, killed)
                dict(faults.procs)[killed].kill()
    assert killed, "the stream ended before a decode worker could be killed"
    assert len(ids) == STREAM_TOKENS
    assert ids == fault_free["stream"], "tokens were duplicated, lost or changed by the resume"
    assert last.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert last.timing.decode_worker != killed
    dict(faults.procs)[killed].wait()
    assert_no_orphans(faults, gone)
    await assert_idle(faults)


async def test_last_decode_worker_killed_ends_with_unavailable(
    faults: LocalCluster, fault_free: dict[str, list[int]]
) -> None:
    """With no decode worker left to resume on, the stream ends with UNAVAILABLE and the
    tokens already sent stand (a prefix of the fault-free output)."""
    survivors = [w for w in _live_workers(faults) if w.startswith("decode")]
    assert len(survivors) == 1
    for name, proc in faults.procs:
        if name.startswith("decode") and proc.poll() is not None:
            _wait_deregistered(faults, name, faults.spec.config.redis.ttl_s + 2)
    gone = _descendants(faults, survivors[0])
    ids: list[int] = []
    async with _router(faults) as stub:
        call = stub.Generate(_request(STREAM_PROMPT, STREAM_TOKENS), timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for message in call:
                ids.extend(message.token_ids)
                if len(ids) >= 20 and dict(faults.procs)[survivors[0]].poll() is None:
                    dict(faults.procs)[survivors[0]].kill()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "tokens were delivered" in (info.value.details() or "")
    assert 20 <= len(ids) < STREAM_TOKENS
    assert ids == fault_free["stream"][: len(ids)]
    dict(faults.procs)[survivors[0]].wait()
    assert_no_orphans(faults, gone)
    await assert_idle(faults)  # the prefill workers hold nothing

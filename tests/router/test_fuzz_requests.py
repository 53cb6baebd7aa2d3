"""Random and malformed requests against the real router of the session cluster (router,
one prefill and one decode worker over real Redis and NIXL).

Every ``GenerateRequest`` that hypothesis draws, and every raw byte string sent in its place,
must end in OK (the stream starts; the test then cancels it) or a clear error status
(``INVALID_ARGUMENT`` with a message) within a deadline: nothing crashes the router, nothing
hangs, and afterwards the router still serves and no engine holds a request or KV blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pdserve.launcher import LocalCluster
from pdserve.v1 import generation_pb2, generation_pb2_grpc, worker_pb2

pytestmark = pytest.mark.engine

StatusFn = Callable[[LocalCluster, str], worker_pb2.WorkerStatus]

CALL_TIMEOUT_S = 60.0
"""Per call: a hang shows up as DEADLINE_EXCEEDED, which fails the test."""

INT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.integers(0, 2**32 - 1)
SMALL_TEXT = st.text(max_size=40)
FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def sampling_params(draw: st.DrawFn) -> generation_pb2.SamplingParams:
    msg = generation_pb2.SamplingParams()
    if draw(st.booleans()):
        msg.max_tokens = draw(st.one_of(st.integers(-3, 8), INT32))
    if draw(st.booleans()):
        msg.temperature = draw(st.one_of(st.just(0.0), FLOATS))
    if draw(st.booleans()):
        msg.top_p = draw(FLOATS)
    if draw(st.booleans()):
        msg.top_k = draw(st.one_of(st.integers(-2, 50), INT32))
    if draw(st.booleans()):
        msg.seed = draw(st.integers(0, 2**64 - 1))
    msg.stop.extend(draw(st.lists(st.text(max_size=300), max_size=20)))
    msg.stop_token_ids.extend(draw(st.lists(UINT32, max_size=70)))
    msg.ignore_eos = draw(st.booleans())
    return msg


@st.composite
def generate_requests(draw: st.DrawFn) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest()
    request.model = draw(st.one_of(st.just(""), st.just("pdserve-default"), SMALL_TEXT))
    request.request_id = draw(st.one_of(st.just(""), st.text(max_size=200)))
    kind = draw(st.sampled_from(["none", "prompt", "token_ids", "chat"]))
    if kind == "prompt":
        request.prompt = draw(st.text(max_size=2000))
    elif kind == "token_ids":
        small = st.integers(0, 60_000)
        request.token_ids.ids.extend(draw(st.lists(st.one_of(small, UINT32), max_size=1100)))
        if not request.token_ids.ids:
            request.token_ids.SetInParent()
    elif kind == "chat":
        request.chat.SetInParent()
        roles = st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), SMALL_TEXT)
        for role, content in draw(st.lists(st.tuples(roles, st.text(max_size=200)), max_size=5)):
            request.chat.messages.add(role=role, content=content)
    if draw(st.booleans()):
        request.sampling.CopyFrom(draw(sampling_params()))
    return request


@pytest.fixture(scope="module")
def stub(cluster: LocalCluster) -> Iterator[generation_pb2_grpc.GenerationStub]:
    with grpc.insecure_channel(cluster.router_address) as channel:
        yield generation_pb2_grpc.GenerationStub(channel)


@pytest.fixture(scope="module")
def raw_generate(
    cluster: LocalCluster,
) -> Iterator[Callable[[bytes], grpc.UnaryStreamMultiCallable]]:
    with grpc.insecure_channel(cluster.router_address) as channel:
        call = channel.unary_stream("/pdserve.v1.Generation/Generate")
        yield lambda raw: call(raw, timeout=CALL_TIMEOUT_S)


def _outcome(responses: Iterator[object]) -> grpc.StatusCode:
    """OK once the first message arrives (the rest of the stream is cancelled), else the
    error status, which must be a clear one."""
    try:
        next(iter(responses))
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details() or ""  # type: ignore[attr-defined]
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert len(details) > 10, details
        return code  # type: ignore[no-any-return]
    finally:
        responses.cancel()  # type: ignore[attr-defined]


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=generate_requests())
@example(request=generation_pb2.GenerateRequest(prompt="Hello"))
@example(request=generation_pb2.GenerateRequest(prompt="x", request_id="r" * 128))
@example(request=generation_pb2.GenerateRequest(prompt="x", request_id="é"))
@example(request=generation_pb2.GenerateRequest(token_ids=generation_pb2.TokenIds(ids=[2**32 - 1])))
@example(
    request=generation_pb2.GenerateRequest(
        prompt="x", sampling=generation_pb2.SamplingParams(max_tokens=2**31 - 1, seed=2**64 - 1)
    )
)
def test_random_requests_get_ok_or_a_clear_status(
    stub: generation_pb2_grpc.GenerationStub, request: generation_pb2.GenerateRequest
) -> None:
    _outcome(stub.Generate(request, timeout=CALL_TIMEOUT_S))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=st.one_of(st.binary(max_size=300), st.builds(lambda b: b"\x12" + b, st.binary())))
@example(raw=b"\x12\x02\xff\xfe")  # prompt that is not UTF-8
@example(raw=b"\xff\xff\xff")  # not a message at all
@example(raw=b"\x1a\x05\x0a\x03\x80\x80\x80")  # token ids cut off mid-varint
def test_raw_bytes_get_ok_or_a_clear_status(
    raw_generate: Callable[[bytes], grpc.UnaryStreamMultiCallable], raw: bytes
) -> None:
    _outcome(raw_generate(raw))  # type: ignore[arg-type]


def test_oversized_request_is_refused(stub: generation_pb2_grpc.GenerationStub) -> None:
    request = generation_pb2.GenerateRequest(prompt="a" * (17 << 20))
    with pytest.raises(grpc.RpcError) as info:
        next(iter(stub.Generate(request, timeout=CALL_TIMEOUT_S)))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_router_serves_and_engines_idle_after_fuzzing(
    cluster: LocalCluster, stub: generation_pb2_grpc.GenerationStub, worker_status: StatusFn
) -> None:
    request = generation_pb2.GenerateRequest(prompt="Hello there")
    request.sampling.max_tokens = 4
    request.sampling.temperature = 0
    request.sampling.ignore_eos = True
    ids = [t for m in stub.Generate(request, timeout=CALL_TIMEOUT_S) for t in m.token_ids]
    assert len(ids) == 4
    busy: dict[str, tuple[int, float]] = {}
    deadline = time.monotonic() + 20
    while True:
        busy.clear()
        for worker_id in [*cluster.worker_ids["prefill"], *cluster.worker_ids["decode"]]:
            status = worker_status(cluster, worker_id)
            if status.num_running_requests or status.kv_usage > 0:
                busy[worker_id] = (status.num_running_requests, status.kv_usage)
        if not busy:
            return
        assert time.monotonic() < deadline, f"engines still busy after fuzzing: {busy}"
        time.sleep(0.1)

"""End to end through the router: real redis-server, real vLLM CPU engines, real NIXL pulls.

Greedy outputs of the disaggregated path must equal those of a plain engine, the KV must really
move (decode-side transfer counters grow, and the decode engine computes only the prompt's tail),
and bad input must get INVALID_ARGUMENT / UNAVAILABLE naming the problem.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import grpc
import pytest

from pdserve.client import AsyncClient, Client
from pdserve.config import PdserveConfig
from pdserve.launcher import LocalCluster, start_redis
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc

pytestmark = pytest.mark.engine

StatusFn = Callable[[LocalCluster, str], worker_pb2.WorkerStatus]

BLOCK = 128  # the CPU engines' KV block size


def _prompt(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 40_000) for _ in range(length)]


def _reference_ids(
    reference: worker_pb2_grpc.DecodeWorkerStub, prompt: list[int], max_tokens: int
) -> list[int]:
    request = worker_pb2.DecodeRequest(
        request_id=f"ref-{random.getrandbits(32)}",
        prompt_token_ids=prompt,
        sampling=generation_pb2.SamplingParams(
            max_tokens=max_tokens, temperature=0, ignore_eos=True
        ),
    )
    ids: list[int] = []
    for message in reference.Decode(request, timeout=120):
        ids.extend(message.token_ids)
    return ids


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Client:
    return Client(cluster.router_address)


@pytest.mark.parametrize(("length", "seed"), [(50, 1), (3 * BLOCK + 17, 2)])
def test_disaggregated_output_equals_plain_engine(
    cluster: LocalCluster,
    client: Client,
    reference: worker_pb2_grpc.DecodeWorkerStub,
    worker_status: StatusFn,
    length: int,
    seed: int,
) -> None:
    prompt = _prompt(length, seed)
    before = worker_status(cluster, "decode-0")
    _, ids, last = client.complete(
        token_ids=prompt, max_tokens=12, temperature=0, ignore_eos=True, timeout=120
    )
    after = worker_status(cluster, "decode-0")

    assert ids == _reference_ids(reference, prompt, 12)
    assert last.timing.disaggregated
    assert last.timing.prefill_worker == "prefill-0"
    assert last.usage.prompt_tokens == length
    assert last.usage.completion_tokens == 12
    assert last.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    # The KV moved: the decode side received the prompt's blocks and computed only its tail
    # (vLLM recomputes at least the last prompt token to sample from it).
    blocks = after.kv_blocks_received - before.kv_blocks_received
    assert blocks == -(-length // BLOCK)
    transferred = after.prompt_tokens_transferred - before.prompt_tokens_transferred
    computed = after.prompt_tokens_computed - before.prompt_tokens_computed
    if length > BLOCK:
        assert after.kv_bytes_received > before.kv_bytes_received
        assert transferred >= (length // BLOCK) * BLOCK
        assert computed < BLOCK
    assert transferred + computed <= length


async def test_eight_concurrent_mixed_lengths(
    cluster: LocalCluster, reference: worker_pb2_grpc.DecodeWorkerStub
) -> None:
    lengths = [20, 700, 140, 60, 300, 9, 450, 256]
    prompts = [_prompt(n, 100 + i) for i, n in enumerate(lengths)]
    async with AsyncClient(cluster.router_address) as aclient:
        results = await asyncio.gather(
            *(
                aclient.complete(
                    token_ids=p, max_tokens=8, temperature=0, ignore_eos=True, timeout=300
                )
                for p in prompts
            )
        )
    for prompt, (_, ids, last) in zip(prompts, results, strict=True):
        assert last.timing.disaggregated
        assert ids == _reference_ids(reference, prompt, 8)


async def test_concurrent_sampled_long_prompts_keep_the_engines_alive(
    cluster: LocalCluster, worker_status: StatusFn
) -> None:
    """Sampled requests get a seed; four 700-token prompts exceed one step's 2048-token budget,
    which on a CPU engine with chunked prefill would split a seeded prompt and kill the engine
    (vLLM's CPU generators cannot rewind). All must complete, and the workers stay up."""
    prompts = [_prompt(700, 300 + i) for i in range(4)]
    async with AsyncClient(cluster.router_address) as aclient:
        results = await asyncio.gather(
            *(
                aclient.complete(
                    token_ids=p, max_tokens=6, temperature=0.8, ignore_eos=True, timeout=300
                )
                for p in prompts
            )
        )
    for _, ids, last in results:
        assert len(ids) == 6
        assert last.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    for worker_id in ("prefill-0", "decode-0"):
        assert worker_status(cluster, worker_id).worker_id == worker_id


def test_chat_uses_the_models_chat_template(cluster: LocalCluster, client: Client) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cluster.spec.config.model.path)
    messages = [("system", "You are terse."), ("user", "Name a colour.")]
    rendered = tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages], add_generation_prompt=True, tokenize=False
    )
    expected = tokenizer.encode(rendered, add_special_tokens=False)
    assert "<|im_start|>assistant" in rendered

    _, chat_ids, chat_last = client.complete(chat=messages, max_tokens=6, temperature=0)
    _, token_ids, _token_last = client.complete(token_ids=expected, max_tokens=6, temperature=0)
    assert chat_last.usage.prompt_tokens == len(expected)
    assert chat_ids == token_ids


def test_stop_string_and_max_tokens_finish_reasons(client: Client) -> None:
    prompt = "The quick brown fox jumps over the lazy dog and then"
    _text, ids, last = client.complete(prompt=prompt, max_tokens=5, temperature=0, ignore_eos=True)
    assert last.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert len(ids) == 5 == last.usage.completion_tokens

    long_text, _, _ = client.complete(prompt=prompt, max_tokens=24, temperature=0, ignore_eos=True)
    # A stop string taken from the middle of the greedy output ends the stream right before it.
    stop = long_text[len(long_text) // 2 : len(long_text) // 2 + 3]
    assert stop.strip(), f"unusable stop string from {long_text!r}"
    cut, cut_ids, cut_last = client.complete(
        prompt=prompt, max_tokens=24, temperature=0, ignore_eos=True, stop=[stop]
    )
    assert cut_last.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert cut_last.stop_reason == stop
    assert stop not in cut
    assert long_text.startswith(cut)
    assert cut_last.usage.completion_tokens == len(cut_ids) < 24


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"token_ids": list(range(100, 100 + 1024 + 5))}, "token_ids"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "temperature": -0.5}, "temperature"),
        ({"prompt": "hi", "top_p": 1.5}, "top_p"),
        ({"prompt": "hi", "top_p": 0.0}, "top_p"),
        ({"prompt": "hi", "model": "no-such-model"}, "no-such-model"),
        ({"token_ids": [10_000_000]}, "vocabulary"),
        ({"chat": [("wizard", "hi")]}, "role"),
    ],
)
def test_bad_input_is_invalid_argument(
    client: Client, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.complete(timeout=30, **kwargs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()
    # The router keeps serving.
    _, ids, _ = client.complete(prompt="still there?", max_tokens=2, temperature=0)
    assert len(ids) >= 1


def test_request_without_input_is_invalid(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list(client.stub.Generate(generation_pb2.GenerateRequest(), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt, token_ids or chat" in info.value.details()


async def test_no_worker_registered_is_unavailable(cluster: LocalCluster, tmp_path: object) -> None:
    from pathlib import Path

    from kv_transfer import allocate_port
    from router.server import RouterProcess

    redis_proc, url = start_redis(Path(str(tmp_path)) / "redis.log")
    config = PdserveConfig.from_dict(cluster.spec.config.to_dict())
    config.redis.url = url
    config.router.grpc_port = allocate_port("127.0.0.1")
    config.router.http_port = 0  # the copied config holds the cluster router's HTTP port
    router = RouterProcess(config)
    await router.start()
    try:
        async with AsyncClient(f"127.0.0.1:{router.port}") as aclient:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await aclient.complete(prompt="hello", max_tokens=2, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no decode worker" in (info.value.details() or "")
    finally:
        await router.stop()
        redis_proc.terminate()
        redis_proc.wait()


def test_client_disconnect_frees_the_request_on_both_workers(
    cluster: LocalCluster, client: Client, worker_status: StatusFn
) -> None:
    stream = client.stub.Generate(
        generation_pb2.GenerateRequest(
            token_ids=generation_pb2.TokenIds(ids=_prompt(2 * BLOCK + 5, 7)),
            sampling=generation_pb2.SamplingParams(max_tokens=400, temperature=0, ignore_eos=True),
        ),
        timeout=120,
    )
    received = 0
    for piece in stream:
        received += len(piece.token_ids)
        if received >= 3:
            break
    stream.cancel()
    assert received >= 3
    deadline = time.monotonic() + 30
    while True:
        prefill = worker_status(cluster, "prefill-0")
        decode = worker_status(cluster, "decode-0")
        if prefill.num_running_requests == 0 and decode.num_running_requests == 0:
            break
        assert time.monotonic() < deadline, (
            f"requests still held: prefill {prefill.num_running_requests}, "
            f"decode {decode.num_running_requests}"
        )
        time.sleep(0.2)

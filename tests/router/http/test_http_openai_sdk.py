"""The HTTP front door driven by the official ``openai`` SDK against a real local cluster
(router, prefill and decode workers, real vLLM CPU engines, NIXL), compared token for token with
the gRPC API for the same greedy requests."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

import openai
import pytest
import requests

from pdserve.client import Client
from pdserve.launcher import LocalCluster
from pdserve.v1 import worker_pb2

pytestmark = pytest.mark.engine

StatusFn = Callable[[LocalCluster, str], worker_pb2.WorkerStatus]
IGNORE_EOS = {"ignore_eos": True}


def _prompt(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 40_000) for _ in range(length)]


@pytest.fixture(scope="module")
def base_url(cluster: LocalCluster) -> str:
    assert cluster.http_address, "the test cluster must run the HTTP front door"
    return f"http://{cluster.http_address}/v1"


@pytest.fixture(scope="module")
def sdk(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.router_address) as client:
        yield client


@pytest.fixture(scope="module")
def model(sdk: openai.OpenAI) -> str:
    (card,) = sdk.models.list().data
    return card.id


def _metrics(base_url: str) -> dict[str, float]:
    text = requests.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _busy(status: worker_pb2.WorkerStatus) -> int:
    return status.num_running_requests + status.num_waiting_requests


def test_models_and_health(cluster: LocalCluster, base_url: str, model: str) -> None:
    assert model == "smollm2-135m-instruct"
    health = requests.get(base_url.removesuffix("/v1") + "/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["ready_workers"] == {"prefill": 1, "decode": 1}


def test_completion_equals_grpc_token_for_token(
    sdk: openai.OpenAI, grpc_client: Client, model: str
) -> None:
    prompt = _prompt(40, 7)
    text, ids, last = grpc_client.complete(
        token_ids=prompt, max_tokens=12, temperature=0, ignore_eos=True, timeout=120
    )
    whole = sdk.completions.create(
        model=model, prompt=prompt, max_tokens=12, temperature=0, extra_body=IGNORE_EOS
    )
    assert whole.choices[0].text == text
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (40, len(ids))

    stream = sdk.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
        extra_body=IGNORE_EOS,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == last.usage.completion_tokens == 12


def test_text_prompt_and_chat_equal_grpc(
    sdk: openai.OpenAI, grpc_client: Client, model: str
) -> None:
    text, _, _ = grpc_client.complete(
        prompt="The capital of France is", max_tokens=10, temperature=0, ignore_eos=True
    )
    got = sdk.completions.create(
        model=model,
        prompt="The capital of France is",
        max_tokens=10,
        temperature=0,
        extra_body=IGNORE_EOS,
    )
    assert got.choices[0].text == text

    question = "Name three colours."
    chat_text, _, _ = grpc_client.complete(
        chat=[("user", question)], max_tokens=10, temperature=0, ignore_eos=True
    )
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": question}
    ]
    whole = sdk.chat.completions.create(
        model=model,
        messages=messages,
        max_completion_tokens=10,
        temperature=0,
        extra_body=IGNORE_EOS,
    )
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == chat_text
    stream = sdk.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=10,
        stream=True,
        temperature=0,
        extra_body=IGNORE_EOS,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat_text
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_async_sdk_equals_grpc(base_url: str, grpc_client: Client, model: str) -> None:
    prompt = _prompt(300, 11)  # more than two KV blocks: a real transfer
    text, _, _ = grpc_client.complete(
        token_ids=prompt, max_tokens=8, temperature=0, ignore_eos=True, timeout=120
    )
    async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
        stream = await client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=8,
            stream=True,
            temperature=0,
            extra_body=IGNORE_EOS,
        )
        pieces = [chunk.choices[0].text async for chunk in stream if chunk.choices]
        assert "".join(pieces) == text
        chat = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=6,
            temperature=0,
            extra_body=IGNORE_EOS,
        )
        chat_text, _, _ = grpc_client.complete(
            chat=[("user", "Hello")], max_tokens=6, temperature=0, ignore_eos=True
        )
        assert chat.choices[0].message.content == chat_text


def test_unknown_model_is_404(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk.completions.create(model="gpt-nothing", prompt="x", max_tokens=2)
    assert info.value.status_code == 404
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "model_not_found"


def test_unsupported_parameters_are_400(sdk: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.completions.create(model=model, prompt="x", max_tokens=2, best_of=3, logprobs=2)
    assert "best_of, logprobs" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], n=2, max_tokens=2
        )
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.completions.create(model=model, prompt="x", max_tokens=0)
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "max_tokens"


def test_client_disconnect_cancels_the_request(
    cluster: LocalCluster, sdk: openai.OpenAI, base_url: str, model: str, worker_status: StatusFn
) -> None:
    before = _metrics(base_url)
    stream = sdk.completions.create(
        model=model,
        prompt=_prompt(20, 3),
        max_tokens=900,
        stream=True,
        temperature=0,
        extra_body=IGNORE_EOS,
    )
    first = next(iter(stream))
    assert first.choices[0].text is not None
    stream.close()  # the client goes away after the first token of 900

    deadline = time.monotonic() + 30
    while _busy(worker_status(cluster, "decode-0")) or _busy(worker_status(cluster, "prefill-0")):
        assert time.monotonic() < deadline, "the request still runs after the client left"
        time.sleep(0.1)
    while (after := _metrics(base_url))["pdserve_router_requests_in_flight"]:
        assert time.monotonic() < deadline, "the router still holds the request"
        time.sleep(0.1)
    failed = 'pdserve_router_requests_finished_total{result="failed"}'
    ok = 'pdserve_router_requests_finished_total{result="ok"}'
    assert after[failed] == before[failed] + 1
    assert after[ok] == before[ok]  # it was cancelled, it did not run to its end

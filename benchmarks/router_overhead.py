"""What the router adds to a request: TTFT and per-token latency, router vs direct.

Starts a local cluster with one decode worker and no prefill worker (so the router sends every
request decode-only to that worker), then sends the same requests alternately through the router
and straight to the decode worker's gRPC service, on one engine, in one run. Prints p50/p90 of
TTFT and of the per-token gap for both paths and their differences.

    .venv/bin/python benchmarks/router_overhead.py --requests 40
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
import uuid

import grpc

from kv_transfer import allocate_port
from pdserve.client import Client
from pdserve.config import PdserveConfig
from pdserve.launcher import ClusterSpec, LocalCluster
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _timed(stream: object) -> tuple[float, list[float]]:
    """(TTFT, gaps between token-carrying messages) of a response stream, in seconds."""
    start = time.perf_counter()
    stamps: list[float] = []
    for message in stream:  # type: ignore[attr-defined]
        if message.token_ids:
            stamps.append(time.perf_counter())
    return stamps[0] - start, [b - a for a, b in itertools.pairwise(stamps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="model directory (default: SmolLM2-135M)")
    parser.add_argument("--requests", type=int, default=40, help="requests per path")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=32)
    args = parser.parse_args()

    config = PdserveConfig()
    config.model.path = args.model
    spec = ClusterSpec(
        config=config,
        num_prefill=0,
        num_decode=1,
        router_port=allocate_port(),
        router_http_port=0,
        cpu_bind=False,
    )
    prompt = [100 + (i * 7919) % 30000 for i in range(args.prompt_tokens)]
    sampling = generation_pb2.SamplingParams(
        max_tokens=args.output_tokens, temperature=0, ignore_eos=True
    )
    results: dict[str, tuple[list[float], list[float]]] = {"router": ([], []), "direct": ([], [])}
    with LocalCluster(spec) as cluster:
        router = Client(cluster.router_address)
        direct_channel = grpc.insecure_channel(cluster.worker_endpoints["decode-0"])
        direct = worker_pb2_grpc.DecodeWorkerStub(direct_channel)
        for i in range(args.requests * 2 + 4):
            path = "router" if i % 2 == 0 else "direct"
            if path == "router":
                stream = router.stub.Generate(
                    generation_pb2.GenerateRequest(
                        token_ids=generation_pb2.TokenIds(ids=prompt), sampling=sampling
                    ),
                    timeout=120,
                )
            else:
                stream = direct.Decode(
                    worker_pb2.DecodeRequest(
                        request_id=uuid.uuid4().hex, prompt_token_ids=prompt, sampling=sampling
                    ),
                    timeout=120,
                )
            ttft, gaps = _timed(stream)
            if i >= 4:  # the first requests warm up both paths
                results[path][0].append(ttft)
                results[path][1].extend(gaps)
        router.close()
        direct_channel.close()

    print(
        f"{args.requests} requests per path, {args.prompt_tokens}-token prompts, "
        f"{args.output_tokens} output tokens, greedy, one decode engine"
    )
    print(
        f"{'path':<8} {'TTFT p50 ms':>12} {'TTFT p90 ms':>12} {'gap p50 ms':>11} {'gap p90 ms':>11}"
    )
    for path, (ttfts, gaps) in results.items():
        print(
            f"{path:<8} {_percentile(ttfts, 50) * 1e3:>12.2f} {_percentile(ttfts, 90) * 1e3:>12.2f}"
            f" {_percentile(gaps, 50) * 1e3:>11.3f} {_percentile(gaps, 90) * 1e3:>11.3f}"
        )
    added_ttft = _percentile(results["router"][0], 50) - _percentile(results["direct"][0], 50)
    added_gap = statistics.median(results["router"][1]) - statistics.median(results["direct"][1])
    print(
        f"router adds: TTFT p50 {added_ttft * 1e3:+.2f} ms, per-token p50 {added_gap * 1e3:+.3f} ms"
    )


if __name__ == "__main__":
    main()

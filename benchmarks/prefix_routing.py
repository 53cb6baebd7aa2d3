"""Cache-aware vs round-robin routing on a multi-tenant shared-prefix workload.

One local cluster (``--prefill`` prefill workers, ``--decode`` decode workers, redis-server)
and two routers over the same workers: the cluster's own, with ``router.routing.policy:
cache_aware``, and a second one with ``round_robin``. The same workload is run through each
router in turn (rounds alternate the order: CA RR, RR CA, ...), and every worker's prefix cache
is reset between runs (``ResetPrefixCache``; the index follows through AllBlocksCleared), so
each run starts cold and both see the same machine load pattern.

Workload: ``--tenants`` tenants, each with its own ``--system-tokens``-token system prompt,
followed by a short random question; ``--requests-per-tenant`` requests per tenant, shuffled
with a fixed seed, sent at ``--concurrency`` requests in flight. Figures per policy:

- prefix hit rate = prompt tokens reused from the prefill worker's cache / prompt tokens, and
  its share of the best achievable (every request but each tenant's first reusing all full
  blocks of its system prompt);
- TTFT p50/p90 (client side, to the first token);
- the routing decision cost is measured separately (``benchmarks/index_lookup.py``).

Usage (default model; ``--model DIR`` for another local model)::

    .venv/bin/python benchmarks/prefix_routing.py [--rounds 1] [--out bench-results/prefix.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import redis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kv_transfer import allocate_port
from pdserve.client import AsyncClient
from pdserve.config import PdserveConfig
from pdserve.launcher import ClusterSpec, LocalCluster
from pdserve.v1 import worker_pb2, worker_pb2_grpc

POLICIES = ("cache_aware", "round_robin")


@dataclass
class Result:
    """One request's outcome."""

    tenant: int
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float
    prefill_worker: str


def workload(args: argparse.Namespace) -> list[tuple[int, list[int]]]:
    rng = random.Random(args.seed)
    systems = [
        [rng.randrange(100, 40_000) for _ in range(args.system_tokens)] for _ in range(args.tenants)
    ]
    requests = [
        (t, systems[t] + [rng.randrange(100, 40_000) for _ in range(args.question_tokens)])
        for t in range(args.tenants)
        for _ in range(args.requests_per_tenant)
    ]
    rng.shuffle(requests)
    return requests


async def run_policy(
    address: str, requests: list[tuple[int, list[int]]], args: argparse.Namespace
) -> list[Result]:
    client = AsyncClient(address)
    queue: asyncio.Queue[tuple[int, list[int]]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    results: list[Result] = []

    async def one(tenant: int, prompt: list[int]) -> None:
        started = time.perf_counter()
        ttft = 0.0
        last = None
        async for piece in client.generate(
            token_ids=prompt,
            max_tokens=args.max_tokens,
            temperature=0,
            ignore_eos=True,
            timeout=600,
        ):
            if not ttft and piece.token_ids:
                ttft = time.perf_counter() - started
            last = piece
        assert last is not None
        results.append(
            Result(
                tenant,
                len(prompt),
                last.usage.cached_prompt_tokens,
                ttft,
                last.timing.prefill_worker or last.timing.decode_worker,
            )
        )

    async def loop() -> None:
        while not queue.empty():
            tenant, prompt = queue.get_nowait()
            await one(tenant, prompt)

    await asyncio.gather(*(loop() for _ in range(args.concurrency)))
    await client.close()
    return results


def reset_caches(cluster: LocalCluster) -> None:
    for worker_id, endpoint in cluster.worker_endpoints.items():
        with grpc.insecure_channel(endpoint) as channel:
            stub: object = (
                worker_pb2_grpc.PrefillWorkerStub(channel)
                if worker_id.startswith("prefill")
                else worker_pb2_grpc.DecodeWorkerStub(channel)
            )
            deadline = time.monotonic() + 60
            while True:
                try:
                    stub.ResetPrefixCache(  # type: ignore[attr-defined]
                        worker_pb2.ResetPrefixCacheRequest(), timeout=30
                    )
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        raise
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)


def start_router(cluster: LocalCluster, policy: str) -> tuple[subprocess.Popen[bytes], str]:
    config = yaml.safe_load(cluster.config_path.read_text())
    config["router"]["routing"]["policy"] = policy
    config["router"]["http_port"] = 0
    path = cluster.config_path.with_name(f"config-{policy}.yaml")
    path.write_text(yaml.safe_dump(config))
    port = allocate_port("127.0.0.1")
    log = (cluster.log_dir / f"router-{policy}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdserve.cli", "router", "--config", str(path), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the {policy} router exited; see {log.name}")
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, address
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {policy} router did not come up")
            time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(results: list[Result], args: argparse.Namespace) -> dict[str, float]:
    prompt = sum(r.prompt_tokens for r in results)
    cached = sum(r.cached_tokens for r in results)
    cacheable = (args.system_tokens // args.block_size) * args.block_size
    best = cacheable * (len(results) - args.tenants * args.rounds_in_result)
    ttfts = [r.ttft_s for r in results]
    return {
        "requests": len(results),
        "hit_rate": cached / prompt,
        "best_hit_rate": best / prompt,
        "share_of_best": cached / best if best else 0.0,
        "ttft_p50_s": percentile(ttfts, 0.5),
        "ttft_p90_s": percentile(ttfts, 0.9),
        "ttft_mean_s": statistics.fmean(ttfts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="local model directory (default: SmolLM2)")
    parser.add_argument("--prefill", type=int, default=2, help="prefill workers (>= 2)")
    parser.add_argument("--decode", type=int, default=1, help="decode workers")
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--question-tokens", type=int, default=24)
    parser.add_argument("--requests-per-tenant", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each policy")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eager", action="store_true", help="skip graph compilation")
    parser.add_argument("--out", type=Path, default=Path("bench-results/prefix_routing.json"))
    args = parser.parse_args()
    if args.prefill < 2:
        parser.error("--prefill must be >= 2: routing needs a choice")

    config = PdserveConfig()
    config.model.path = args.model
    config.worker.enforce_eager = args.eager
    spec = ClusterSpec(
        config=config,
        num_prefill=args.prefill,
        num_decode=args.decode,
        router_port=allocate_port("127.0.0.1"),
        router_http_port=0,
        cpu_bind=True,
    )
    requests = workload(args)
    print(
        f"{args.tenants} tenants x {args.requests_per_tenant} requests, system prompt "
        f"{args.system_tokens} tokens, question {args.question_tokens}, concurrency "
        f"{args.concurrency}; starting {args.prefill} prefill + {args.decode} decode workers",
        flush=True,
    )
    by_policy: dict[str, list[Result]] = {p: [] for p in POLICIES}
    with LocalCluster(spec) as cluster:
        registry = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        args.block_size = int(registry.hget("pdserve:worker:prefill-0", "block_size") or 0)
        registry.close()
        routers = {"cache_aware": cluster.router_address}
        rr_proc, routers["round_robin"] = start_router(cluster, "round_robin")
        try:
            for round_no in range(args.rounds):
                order = POLICIES if round_no % 2 == 0 else POLICIES[::-1]
                for policy in order:
                    reset_caches(cluster)
                    time.sleep(1.0)  # let AllBlocksCleared reach the index
                    started = time.monotonic()
                    results = asyncio.run(run_policy(routers[policy], requests, args))
                    by_policy[policy] += results
                    print(
                        f"round {round_no + 1} {policy}: {len(results)} requests in "
                        f"{time.monotonic() - started:.1f} s",
                        flush=True,
                    )
        finally:
            rr_proc.terminate()
            rr_proc.wait(timeout=30)
    args.rounds_in_result = args.rounds
    summary = {p: summarize(r, args) for p, r in by_policy.items()}
    ca, rr = summary["cache_aware"], summary["round_robin"]
    print(f"\n{'':24}{'cache_aware':>14}{'round_robin':>14}{'ratio':>10}")
    for key, label in (
        ("hit_rate", "prefix hit rate"),
        ("share_of_best", "share of best hit rate"),
        ("ttft_p50_s", "TTFT p50 (s)"),
        ("ttft_p90_s", "TTFT p90 (s)"),
        ("ttft_mean_s", "TTFT mean (s)"),
    ):
        ratio = rr[key] / ca[key] if key.startswith("ttft") else ca[key] / max(rr[key], 1e-9)
        print(f"{label:24}{ca[key]:>14.3f}{rr[key]:>14.3f}{ratio:>9.2f}x")
    print(f"best achievable hit rate: {ca['best_hit_rate']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "args": {k: v for k, v in vars(args).items() if k != "out"},
                "summary": summary,
                "requests": {p: [asdict(r) for r in rs] for p, rs in by_policy.items()},
            },
            indent=2,
            default=str,
        )
    )
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()

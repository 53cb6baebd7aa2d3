"""Soak test: mixed traffic for N minutes while workers are killed and restarted.

Starts a local cluster of its own (redis-server, 2 prefill + 2 decode workers, the router;
the tiny test model by default) and runs ``--concurrency`` client loops of mixed requests
(prompts of 20-900 tokens, 4-64 output tokens, greedy or sampled) for ``--minutes``. A
``--cancel-fraction`` of the requests is cancelled by the client at a random moment. Every
``--kill-every-s`` seconds one worker (prefill and decode in turn) gets SIGKILL and is started
again at once (it rejoins after its engine start-up).

Each request ends as one of:

- ``completed``: the stream ended with a finish reason and the expected number of tokens
  (``ignore_eos``); greedy outputs must also equal every other greedy run of the same prompt
  (``mismatched`` counts those that do not: a duplicated or lost token on a resume shows here);
- ``failed``: a gRPC status (counted per code), tokens already sent stand;
- ``cancelled``: by the client, on purpose;
- ``lost``: the stream ended OK but without a finish reason or with the wrong token count;
- ``hung``: no answer by the client's deadline (``--request-deadline-s``).

At the end the traffic stops and the benchmark polls every live worker's ``GetStatus`` until no
engine runs a request or holds KV blocks (or reports what is left after 60 s), and it reports
the router's RSS sampled every 10 s. Writes ``results.json`` into ``--out-dir`` and prints a
summary. Run it with the heavy lock held, in the background::

    flock /tmp/pdserve-heavy.lock timeout 1500 .venv/bin/python benchmarks/soak.py \\
        --minutes 10 --out-dir bench-results/soak > /tmp/soak.log 2>&1 &
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

from kv_transfer import allocate_port
from pdserve.config import PdserveConfig
from pdserve.launcher import ClusterSpec, LocalCluster
from pdserve.models import cache_root, make_tiny_llama
from pdserve.v1 import generation_pb2, generation_pb2_grpc, worker_pb2, worker_pb2_grpc

logger = logging.getLogger("soak")

NUM_PROMPTS = 24
"""Distinct prompts; each is sent many times, so greedy outputs can be compared."""


@dataclass
class Tally:
    """Outcomes so far."""

    sent: int = 0
    completed: int = 0
    cancelled: int = 0
    lost: int = 0
    hung: int = 0
    mismatched: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    kills: list[dict[str, Any]] = field(default_factory=list)
    skipped_kills: int = 0
    rss_mib: list[tuple[float, float]] = field(default_factory=list)


def _prompts(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = [rng.choice([20, 60, 150, 300, 600, 900]) for _ in range(NUM_PROMPTS)]
    return [[rng.randrange(100, 40_000) for _ in range(n)] for n in lengths]


async def client_loop(
    address: str,
    prompts: list[list[int]],
    args: argparse.Namespace,
    tally: Tally,
    greedy: dict[tuple[int, int], list[int]],
    stop_at: float,
    seed: int,
) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        while time.monotonic() < stop_at:
            index = rng.randrange(len(prompts))
            max_tokens = rng.choice([4, 16, 32, 64])
            sampled = rng.random() < 0.3
            request = generation_pb2.GenerateRequest()
            request.token_ids.ids.extend(prompts[index])
            request.sampling.max_tokens = max_tokens
            request.sampling.temperature = 0.8 if sampled else 0.0
            request.sampling.ignore_eos = True
            cancel_after = rng.uniform(0.0, 2.0) if rng.random() < args.cancel_fraction else None
            tally.sent += 1
            call = stub.Generate(request, timeout=args.request_deadline_s)
            ids: list[int] = []
            last: list[generation_pb2.GenerateResponse] = []
            try:
                if cancel_after is not None:
                    try:
                        await asyncio.wait_for(_consume(call, ids, last), cancel_after)
                    except TimeoutError:
                        call.cancel()
                        tally.cancelled += 1
                        continue
                else:
                    await _consume(call, ids, last)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    tally.hung += 1
                    logger.error("hung: %s", exc.details())
                else:
                    tally.failed[exc.code().name] += 1
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        await asyncio.sleep(0.5)
                continue
            if not last or not last[-1].finish_reason or len(ids) != max_tokens:
                tally.lost += 1
                logger.error("lost: %d of %d tokens, last=%s", len(ids), max_tokens, last)
                continue
            tally.completed += 1
            if not sampled:
                key = (index, max_tokens)
                seen = greedy.setdefault(key, ids)
                if seen != ids:
                    tally.mismatched += 1
                    logger.error("greedy output of prompt %d differs from an earlier run", index)


async def _consume(call: Any, ids: list[int], last: list[generation_pb2.GenerateResponse]) -> None:
    async for message in call:
        ids.extend(message.token_ids)
        last[:] = [message]


def _status(endpoint: str, role: str) -> worker_pb2.WorkerStatus:
    with grpc.insecure_channel(endpoint) as channel:
        stub: Any = (
            worker_pb2_grpc.PrefillWorkerStub(channel)
            if role == "prefill"
            else worker_pb2_grpc.DecodeWorkerStub(channel)
        )
        return stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=10)  # type: ignore[no-any-return]


def _live(cluster: LocalCluster) -> list[str]:
    return [n for n, p in cluster.procs if n.startswith(("prefill", "decode")) and p.poll() is None]


async def chaos_loop(
    cluster: LocalCluster, args: argparse.Namespace, tally: Tally, stop_at: float
) -> None:
    """Kills a worker every ``kill_every_s`` on a fixed cadence (roles in turn) and restarts it
    in the background, so a slow restart does not delay the next kill. A kill never leaves a
    role without a worker that is up; when neither role can spare one, the kill is skipped."""
    turn = 0
    rng = random.Random(args.seed + 1)
    restarting: set[str] = set()
    restarts: list[asyncio.Task[None]] = []
    started = time.monotonic()

    async def restart(victim: str, killed_at: float) -> None:
        try:
            await asyncio.to_thread(cluster.respawn, victim)
            back = time.monotonic() - killed_at
            logger.info("%s is back after %.1f s", victim, back)
        except Exception as exc:  # reported; the soak goes on
            back = -1.0
            logger.error("could not restart %s: %s", victim, exc)
        finally:
            restarting.discard(victim)
        tally.kills.append({"worker": victim, "back_after_s": round(back, 1)})

    try:
        while True:
            next_kill = started + (turn + 1) * args.kill_every_s
            if next_kill >= stop_at:
                return
            await asyncio.sleep(max(0.0, next_kill - time.monotonic()))
            # Roles in turn; when the role whose turn it is has a worker still restarting, the
            # other role's worker is killed instead (each role always keeps one worker up).
            order = [("decode", "prefill")[(turn + i) % 2] for i in range(2)]
            turn += 1
            up = {
                role: [w for w in _live(cluster) if w.startswith(role) and w not in restarting]
                for role in order
            }
            role = next((r for r in order if len(up[r]) >= 2), "")
            if not role:
                logger.info("skipped a kill: workers up %s", up)
                tally.skipped_kills += 1
                continue
            victim = rng.choice(up[role])
            proc = dict(cluster.procs)[victim]
            restarting.add(victim)
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            logger.info("killed %s", victim)
            restarts.append(asyncio.create_task(restart(victim, time.monotonic())))
    finally:
        # The traffic has stopped: let the restarts finish, so the end state counts every worker.
        await asyncio.gather(*restarts)


async def rss_loop(router_pid: int, tally: Tally, stop_at: float, started: float) -> None:
    process = psutil.Process(router_pid)
    while time.monotonic() < stop_at:
        tally.rss_mib.append(
            (round(time.monotonic() - started, 1), process.memory_info().rss / 2**20)
        )
        await asyncio.sleep(10)


async def wait_idle(cluster: LocalCluster, timeout_s: float) -> dict[str, Any]:
    """Polls every live worker until nothing runs and no KV is held; returns what is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        left: dict[str, Any] = {}
        for worker in _live(cluster):
            role = "prefill" if worker.startswith("prefill") else "decode"
            try:
                status = await asyncio.to_thread(_status, cluster.worker_endpoints[worker], role)
            except grpc.RpcError as exc:  # a restart that has not finished: it holds nothing
                left[worker] = {"unreachable": exc.code().name}
                continue
            if status.num_running_requests or status.kv_usage > 0:
                left[worker] = {
                    "running": status.num_running_requests,
                    "kv_usage": status.kv_usage,
                }
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.5)


async def soak(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    prompts = _prompts(args.seed)
    greedy: dict[tuple[int, int], list[int]] = {}
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    router_pid = dict(cluster.procs)["router"].pid
    tasks = [
        client_loop(
            cluster.router_address, prompts, args, tally, greedy, stop_at, args.seed + 10 + i
        )
        for i in range(args.concurrency)
    ]
    await asyncio.gather(
        *tasks,
        chaos_loop(cluster, args, tally, stop_at),
        rss_loop(router_pid, tally, stop_at, started),
    )
    elapsed = time.monotonic() - started
    left = await wait_idle(cluster, 60)
    rss = [r for _, r in tally.rss_mib]
    warm = rss[len(rss) // 5 :] or rss  # after the first fifth: caches and pools are warm
    return {
        "minutes": args.minutes,
        "elapsed_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "cancel_fraction": args.cancel_fraction,
        "kill_every_s": args.kill_every_s,
        "sent": tally.sent,
        "completed": tally.completed,
        "cancelled": tally.cancelled,
        "failed": dict(tally.failed),
        "lost": tally.lost,
        "hung": tally.hung,
        "mismatched_greedy": tally.mismatched,
        "kills": tally.kills,
        "skipped_kills": tally.skipped_kills,
        "engines_busy_at_end": left,
        "router_rss_mib": {
            "first": round(rss[0], 1) if rss else None,
            "warm_first": round(warm[0], 1) if warm else None,
            "last": round(rss[-1], 1) if rss else None,
            "max": round(max(rss), 1) if rss else None,
            "samples": tally.rss_mib,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--cancel-fraction", type=float, default=0.1)
    parser.add_argument("--kill-every-s", type=float, default=60.0)
    parser.add_argument("--request-deadline-s", type=float, default=120.0)
    parser.add_argument("--model", default="", help="model directory (default: tiny test model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("bench-results/soak"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    model = args.model or str(
        make_tiny_llama(cache_root() / "models" / "tiny-llama-test", max_position_embeddings=2048)
    )
    config = PdserveConfig()
    config.model.path = model
    config.model.max_model_len = 1024
    config.worker.enforce_eager = True
    config.worker.kv_cache_gib = 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    spec = ClusterSpec(
        config=config,
        num_prefill=2,
        num_decode=2,
        router_port=allocate_port("127.0.0.1"),
        router_http_port=0,
        cpu_bind=False,
        log_dir=args.out_dir / "logs",
    )
    with LocalCluster(spec) as cluster:
        results = asyncio.run(soak(cluster, args))
    results["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "gpu": False,
    }
    results["command"] = " ".join(["benchmarks/soak.py", *(argv or sys.argv[1:])])
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2))
    summary = {k: v for k, v in results.items() if k != "router_rss_mib"}
    summary["router_rss_mib"] = {
        k: v for k, v in results["router_rss_mib"].items() if k != "samples"
    }
    print(json.dumps(summary, indent=2))
    ok = not (results["lost"] or results["hung"] or results["mismatched_greedy"])
    return 0 if ok and not results["engines_busy_at_end"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``pdserve`` command.

pdserve up          a local cluster: Redis, workers, router (Ctrl-C stops it all)
pdserve generate    stream a completion from a router
pdserve status      the workers registered in Redis, with their load
pdserve router      run one router process
pdserve worker      run one prefill or decode worker process
pdserve bench       benchmark a running router against SLOs
pdserve planner     the autoscaler of the prefill and decode pools
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# -- up -------------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    from pdserve.config import PdserveConfig
    from pdserve.launcher import ClusterSpec, LocalCluster

    config = PdserveConfig.load(args.config)
    if args.model:
        config.model.path = args.model
    if args.runtime == "processes" and args.ray_address:
        print("error: --ray-address needs --runtime ray", file=sys.stderr)
        return 2
    spec = ClusterSpec(
        config=config,
        num_prefill=args.prefill,
        num_decode=args.decode,
        redis_url=args.redis_url or "",
        router_port=args.port,
        router_http_port=config.router.http_port if args.http_port is None else args.http_port,
        cpu_bind=not args.no_cpu_bind,
    )
    cluster: Any
    if args.runtime == "ray":
        from pdserve.ray_runtime.cluster import RayClusterOptions, RayLocalCluster
        from pdserve.ray_runtime.node import RayOptions

        cluster = RayLocalCluster(
            spec,
            RayClusterOptions(
                ray=RayOptions(
                    address=args.ray_address or "",
                    include_dashboard=not args.no_dashboard,
                    dashboard_port=args.dashboard_port,
                )
            ),
        )
    else:
        cluster = LocalCluster(spec)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"starting pdserve: {args.prefill} prefill + {args.decode} decode worker(s), "
        f"model {config.model.name} (engines take ~30 s each to start on a CPU)",
        flush=True,
    )
    try:
        cluster.start()
        # ray.init installs its own SIGTERM handler: make Ctrl-C / SIGTERM stop the cluster here.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        print(f"router (gRPC)   {cluster.router_address}")
        if cluster.http_address:
            print(f"router (HTTP)   http://{cluster.http_address}/v1  (OpenAI-compatible)")
        print(f"redis           {cluster.redis_url}")
        ray_node = getattr(cluster, "ray_node", None)
        if ray_node is not None:
            print(f"ray             {ray_node.address}")
            if ray_node.dashboard_url:
                print(f"ray dashboard   {ray_node.dashboard_url}")
            print(f"ray metrics     http://127.0.0.1:{ray_node.metrics_export_port}/metrics")
            print("worker logs     Ray dashboard > Actors (locally /tmp/ray/session_latest/logs)")
        for worker_id, endpoint in sorted(cluster.worker_endpoints.items()):
            print(f"{worker_id:<15} {endpoint}")
        print(f"logs            {cluster.log_dir}", flush=True)
        if args.sample:
            from pdserve.client import Client

            print(f"\n> {args.sample}", flush=True)
            with Client(cluster.router_address) as client:
                last = None
                for piece in client.generate(
                    chat=[("user", args.sample)], max_tokens=args.sample_max_tokens, temperature=0
                ):
                    print(piece.text, end="", flush=True)
                    last = piece
            if last is not None:
                print(
                    f"\n[{last.usage.completion_tokens} tokens, TTFT "
                    f"{last.timing.ttft_s * 1000:.0f} ms, prefill on "
                    f"{last.timing.prefill_worker or '-'}, decode on {last.timing.decode_worker}]",
                    flush=True,
                )
        if args.once:
            return 0
        print("\nserving; Ctrl-C stops the cluster", flush=True)
        while not stop.wait(0.5):
            for name, proc in cluster.procs:
                if proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    return 1
        return 0
    finally:
        print("stopping pdserve ...", flush=True)
        cluster.stop()
        print("stopped", flush=True)


def _add_up(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="run a local cluster (Redis, workers, router)")
    p.add_argument("--config", help="pdserve YAML config (default: $PDSERVE_CONFIG or defaults)")
    p.add_argument("--model", help="local model directory (default: embedded SmolLM2-135M)")
    p.add_argument("--prefill", type=int, default=1, help="prefill workers (default 1)")
    p.add_argument("--decode", type=int, default=1, help="decode workers (default 1)")
    p.add_argument("--port", type=int, default=50051, help="router gRPC port (default 50051)")
    p.add_argument(
        "--http-port",
        type=int,
        help="router OpenAI-compatible HTTP port (default: router.http_port, 8000; 0: off)",
    )
    p.add_argument("--redis-url", help="use this Redis instead of starting a redis-server")
    p.add_argument(
        "--no-cpu-bind",
        action="store_true",
        help="do not pin each engine to its own core (--runtime processes only)",
    )
    p.add_argument(
        "--runtime",
        choices=["ray", "processes"],
        default="ray",
        help="ray (default): workers are Ray actors managed by the pool manager; processes: "
        "plain child processes, one engine pinned per core (benchmarks)",
    )
    p.add_argument(
        "--ray-address", help="join this Ray cluster instead of starting a local one"
    )
    p.add_argument(
        "--dashboard-port", type=int, default=8265, help="local Ray dashboard port (8265)"
    )
    p.add_argument("--no-dashboard", action="store_true", help="start Ray without its dashboard")
    p.add_argument("--sample", help="send this chat message once the cluster is up")
    p.add_argument("--sample-max-tokens", type=int, default=32)
    p.add_argument("--once", action="store_true", help="stop after the sample request")
    p.set_defaults(handler=_cmd_up)


# -- generate -------------------------------------------------------------------------------


def _cmd_generate(args: argparse.Namespace) -> int:
    import grpc

    from pdserve.client import Client

    kwargs: dict[str, Any] = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "stop": args.stop or None,
        "ignore_eos": args.ignore_eos or None,
        "model": args.model,
    }
    if args.chat:
        kwargs["chat"] = [("user", args.prompt)]
    else:
        kwargs["prompt"] = args.prompt
    try:
        with Client(args.router) as client:
            last = None
            for piece in client.generate(timeout=args.timeout, **kwargs):
                print(piece.text, end="", flush=True)
                last = piece
    except grpc.RpcError as exc:
        print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print()
    if last is not None and args.verbose:
        print(
            f"[{last.usage.prompt_tokens} prompt + {last.usage.completion_tokens} completion "
            f"tokens; TTFT {last.timing.ttft_s * 1000:.1f} ms; E2E {last.timing.e2e_s:.2f} s]",
            file=sys.stderr,
        )
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("generate", help="stream a completion from a router")
    p.add_argument("prompt", help="the prompt (or the user message with --chat)")
    p.add_argument("--router", default="localhost:50051", help="router address")
    p.add_argument("--chat", action="store_true", help="send it as a chat message")
    p.add_argument("--model", default="", help="model name (default: the router's)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="print usage and timing")
    p.set_defaults(handler=_cmd_generate)


# -- status ---------------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    import redis.asyncio as aioredis

    from pdserve.config import PdserveConfig, redis_password
    from pdserve.registry import Registry

    config = PdserveConfig.load(args.config)
    url = args.redis_url or config.redis.url
    if not args.no_ray:
        from pdserve.ray_runtime.status import format_ray_status, read_ray_status_bounded

        ray_status = read_ray_status_bounded(args.ray_address)
        if ray_status is not None:
            print(format_ray_status(ray_status))
            print()
            url = url or str(ray_status.manager.get("redis_url", ""))
    if not url:
        print("error: pass --redis-url or set redis.url / PDSERVE_REDIS_URL", file=sys.stderr)
        return 2

    async def read() -> list[Any]:
        client = aioredis.from_url(url, password=redis_password(), decode_responses=True)
        try:
            return await Registry(client).list_workers()
        finally:
            await client.aclose()

    workers = asyncio.run(read())
    if not workers:
        print("no workers registered")
        return 0
    print(f"{'worker':<16} {'role':<8} {'state':<9} {'endpoint':<22} running waiting kv_usage")
    for w in sorted(workers, key=lambda w: (w.role, w.worker_id)):
        print(
            f"{w.worker_id:<16} {w.role:<8} {w.state:<9} {w.endpoint:<22} "
            f"{w.num_running:>7} {w.num_waiting:>7} {w.kv_usage:>8.1%}"
        )
    return 0


def _add_status(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="list the registered workers and their load")
    p.add_argument("--config")
    p.add_argument("--redis-url")
    p.add_argument(
        "--ray-address",
        default="auto",
        help="Ray cluster whose pools to show (default: the running one, if any)",
    )
    p.add_argument("--no-ray", action="store_true", help="read the registry only")
    p.set_defaults(handler=_cmd_status)


# -- router / worker ------------------------------------------------------------------------


def _cmd_router(args: argparse.Namespace) -> int:
    from pdserve.config import PdserveConfig
    from router.server import RouterProcess

    config = PdserveConfig.load(args.config)
    if args.redis_url:
        config.redis.url = args.redis_url
    if args.port is not None:
        config.router.grpc_port = args.port
    if args.model:
        config.model.path = args.model

    async def serve() -> None:
        router = RouterProcess(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await router.start()
            await stop.wait()
        finally:
            await router.stop()

    asyncio.run(serve())
    return 0


def _add_router(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("router", help="run one router process")
    p.add_argument("--config")
    p.add_argument("--redis-url")
    p.add_argument("--port", type=int, help="gRPC port (overrides router.grpc_port)")
    p.add_argument("--model", help="local model directory (for the tokenizer)")
    p.set_defaults(handler=_cmd_router)


def _cmd_worker(args: argparse.Namespace) -> int:
    from pdserve.worker_runtime import _serve, options_from_args

    return asyncio.run(_serve(options_from_args(args.role, args)))


def _add_worker(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from pdserve.worker_runtime import add_worker_arguments

    p = sub.add_parser("worker", help="run one prefill or decode worker process")
    p.add_argument("--role", choices=["prefill", "decode"], required=True)
    add_worker_arguments(p)
    p.set_defaults(handler=_cmd_worker)


# -- assembly -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdserve", description="Disaggregated prefill/decode LLM serving."
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_up, _add_generate, _add_status, _add_router, _add_worker):
        add(sub)
    for module in ("pdserve.bench.cli", "pdserve.planner.cli", "pdserve.ray_runtime.bootstrap"):
        try:
            extension = __import__(module, fromlist=["add_parser"])
        except ImportError:
            continue
        extension.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(args, "log_level", "WARNING")
    if args.command in ("router", "worker") and level == "WARNING":
        level = "INFO"
    _configure_logging(level)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())

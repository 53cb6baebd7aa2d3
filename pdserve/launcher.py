"""A whole pdserve cluster on one machine: Redis, workers and the router as child processes.

:class:`LocalCluster` starts a ``redis-server`` on a free port (unless given a URL), the prefill
and decode workers (one engine per process, each pinned to one core, round robin),
then the router, and waits until every worker has registered and the router answers health
checks. :meth:`LocalCluster.stop` stops them in reverse order (SIGTERM, then SIGKILL after a
grace period). Children are also told by the kernel to die with the launcher (PR_SET_PDEATHSIG),
so no process outlives it, even when it is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import grpc
import redis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kv_transfer import allocate_port
from pdserve.config import PdserveConfig
from pdserve.models import resolve_model_path

logger = logging.getLogger(__name__)

__all__ = ["ClusterSpec", "LocalCluster", "start_redis", "wait_for_router"]


@dataclass
class ClusterSpec:
    """What ``pdserve up`` starts."""

    config: PdserveConfig = field(default_factory=PdserveConfig)
    num_prefill: int = 1
    num_decode: int = 1
    redis_url: str = ""
    """Empty: start a redis-server on a free port."""
    router_port: int = 50051
    router_http_port: int = 8000
    """Port of the router's OpenAI-compatible HTTP API; 0: no HTTP front door."""
    cpu_bind: bool = True
    """Pin each worker's engine to one core (round robin over the cores when there are more
    engines than cores)."""
    kv_transfer: bool = True
    """False: decode workers run plain engines and no prefill workers are started."""
    log_dir: Path | None = None
    """Where each child's log goes (default: a temporary directory)."""
    start_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.num_prefill < 0 or self.num_decode < 1:
            raise ValueError(
                f"a cluster needs >= 0 prefill and >= 1 decode workers, got "
                f"{self.num_prefill} and {self.num_decode}"
            )


_EXEC_BOUND_TO_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)  # the launcher died before the line above\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def bound_to_parent(args: list[str]) -> list[str]:
    """``args`` wrapped so that the kernel sends the process SIGTERM when the calling thread's
    process dies (``PR_SET_PDEATHSIG``, kept across the ``exec``).

    The signal is set by a small Python stub that then execs ``args``, not by a
    ``preexec_fn``: running Python between fork and exec in a process with other threads
    (gRPC's, asyncio's executor) can crash or deadlock the child. The kernel sends the signal
    when the *thread* that started the child exits, so start children from a thread that lives
    as long as the cluster (the main thread, or a pool's long-lived worker)."""
    return [sys.executable, "-c", _EXEC_BOUND_TO_PARENT, str(os.getpid()), *args]


def start_redis(log_path: Path, port: int = 0) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on loopback ``port`` (0: a free one), without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError(
            "redis-server is not installed: `apt-get install redis-server`, or pass --redis-url"
        )
    port = port or allocate_port("127.0.0.1")
    log = log_path.open("ab")
    proc = subprocess.Popen(
        bound_to_parent(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no"]
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {log_path}") from None
            time.sleep(0.05)
    client.close()
    return proc, url


class ClusterProcesses:
    """What both launchers share: the spec, the child processes (with their logs), Redis, the
    written config file, the router process and the start/stop protocol. Subclasses start the
    workers in ``_start`` and stop everything in ``stop``."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.redis_url = spec.redis_url
        self.router_address = f"127.0.0.1:{spec.router_port}"
        self.http_address = f"127.0.0.1:{spec.router_http_port}" if spec.router_http_port else ""
        """``host:port`` of the router's OpenAI-compatible HTTP API; empty when disabled."""
        self.worker_ids: dict[str, list[str]] = {"prefill": [], "decode": []}
        self.worker_endpoints: dict[str, str] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="pdserve-"))
        self.log_dir = spec.log_dir or self._tmp / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self._tmp / "config.yaml"
        self._args: dict[str, list[str]] = {}

    def start(self) -> Self:
        """Starts the cluster; on any failure stops what was started and re-raises."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self, grace_s: float = 20.0) -> None:
        raise NotImplementedError

    def _write_config(self) -> PdserveConfig:
        """Resolves the model, starts Redis unless given a URL, and writes the config file every
        process of the cluster reads; returns the config."""
        spec = self.spec
        config = spec.config
        config.model.path = str(resolve_model_path(config.model.path))
        if not self.redis_url:
            proc, self.redis_url = start_redis(self.log_dir / "redis.log")
            self.procs.append(("redis", proc))
        config.redis.url = self.redis_url
        config.router.grpc_port = spec.router_port
        config.router.http_port = spec.router_http_port
        self.config_path.write_text(yaml.safe_dump(config.to_dict()))
        return config

    def _spawn(self, name: str, args: list[str]) -> None:
        self.procs.append((name, self._popen(name, args)))

    def _popen(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self._args[name] = list(args)
        log = (self.log_dir / f"{name}.log").open("wb")
        env = dict(os.environ, PDSERVE_ADVERTISE_HOST="127.0.0.1")
        proc = subprocess.Popen(
            bound_to_parent(args), stdout=log, stderr=subprocess.STDOUT, env=env
        )
        logger.info("started %s (pid %d), log %s", name, proc.pid, log.name)
        return proc

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = _tail(self.log_dir / f"{name}.log")
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{tail}")

    def _start_router(self) -> None:
        """Starts the router process and waits until it serves."""
        self._spawn(
            "router",
            [sys.executable, "-m", "pdserve.cli", "router", "--config", str(self.config_path)],
        )
        wait_for_router(self.router_address, self.http_address, self._check_alive, self.log_dir)

    @staticmethod
    def _stop_procs(procs: list[tuple[str, subprocess.Popen[bytes]]], grace_s: float) -> None:
        """SIGTERM each process in turn, SIGKILL after ``grace_s``, and wait for it."""
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalCluster(ClusterProcesses):
    """Starts and stops a local cluster of child processes (see the module docstring)."""

    def _start(self) -> None:
        spec = self.spec
        self._write_config()

        roles = ["prefill"] * (spec.num_prefill if spec.kv_transfer else 0)
        roles += ["decode"] * spec.num_decode
        cores = os.cpu_count() or 1
        counts = {"prefill": 0, "decode": 0}
        for index, role in enumerate(roles):
            worker_id = f"{role}-{counts[role]}"
            counts[role] += 1
            args = [
                sys.executable,
                "-m",
                f"{role}_worker",
                "--config",
                str(self.config_path),
                "--worker-id",
                worker_id,
                "--port",
                str(allocate_port("127.0.0.1")),
                "--nixl-port",
                str(allocate_port("127.0.0.1")),
            ]
            if spec.cpu_bind:
                # One core per engine, round robin: an engine's OpenMP threads spin-wait, so
                # engines sharing all cores slow each other down far more than pinned ones.
                args += ["--cpu-bind", str(index % cores)]
            if not spec.kv_transfer:
                args.append("--no-kv-transfer")
            self._spawn(worker_id, args)
            self.worker_ids[role].append(worker_id)
        self._wait_for_workers()
        self._start_router()

    def _wait_for_workers(self) -> None:
        expected = {w for ids in self.worker_ids.values() for w in ids}
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        deadline = time.monotonic() + self.spec.start_timeout_s
        try:
            while True:
                self._check_alive()
                ready = {
                    w for w in expected if client.hget(f"pdserve:worker:{w}", "state") == "ready"
                }
                if ready == expected:
                    for w in expected:
                        endpoint = client.hget(f"pdserve:worker:{w}", "endpoint")
                        self.worker_endpoints[w] = str(endpoint)
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"workers {sorted(expected - ready)} did not register within "
                        f"{self.spec.start_timeout_s:.0f} s; logs in {self.log_dir}"
                    )
                time.sleep(0.2)
        finally:
            client.close()

    # -- stop -------------------------------------------------------------------------------

    def stop(self, grace_s: float = 20.0) -> None:
        """Stops every child (router first, Redis last) and waits for them to exit."""
        self._stop_procs(list(reversed(self.procs)), grace_s)
        self.procs.clear()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Sends ``sig`` to one child (for fault tests) and returns its pid."""
        for child, proc in self.procs:
            if child == name:
                proc.send_signal(sig)
                return proc.pid
        raise KeyError(name)

    # -- fault tests: bring a killed worker back ------------------------------------------

    def respawn(self, name: str, timeout_s: float = 300.0) -> int:
        """Starts a worker that has exited again, with its original arguments (same ports),
        once its old registration has expired; waits until it is registered ``ready`` and
        returns its new pid. The old log is kept as ``<name>.log.<old pid>``."""
        index, old = next((i, p) for i, (n, p) in enumerate(self.procs) if n == name)
        if old.poll() is None:
            raise RuntimeError(f"{name} (pid {old.pid}) is still running")
        log = self.log_dir / f"{name}.log"
        if log.exists():
            log.rename(self.log_dir / f"{name}.log.{old.pid}")
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        key = f"pdserve:worker:{name}"
        deadline = time.monotonic() + timeout_s
        try:
            while client.exists(key):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the registration of {name} did not expire")
                time.sleep(0.1)
            # Replaced in place: several workers may be respawned at once from other threads.
            new = self._popen(name, self._args[name])
            self.procs[index] = (name, new)
            while client.hget(key, "state") != "ready":
                if new.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {new.returncode}:\n{_tail(log)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not register again within {timeout_s:.0f} s")
                time.sleep(0.2)
            self.worker_endpoints[name] = str(client.hget(key, "endpoint"))
        finally:
            client.close()
        return new.pid



def wait_for_router(
    address: str,
    http_address: str,
    check_alive: Callable[[], None],
    log_dir: Path,
    timeout_s: float = 120.0,
) -> None:
    """Waits until the router at ``address`` answers its health check SERVING and its HTTP
    front door (``http_address``; empty: none) accepts connections; ``check_alive`` raises when
    a child of the cluster has exited."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            check_alive()
            with contextlib.suppress(grpc.RpcError):
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING and _listening(
                    http_address
                ):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the router did not come up; see {log_dir}")
            time.sleep(0.1)


def _listening(address: str) -> bool:
    """True when ``address`` is empty (nothing to wait for) or accepts TCP connections."""
    if not address:
        return True
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

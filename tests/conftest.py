"""Shared fixtures: the tiny test model and one local cluster per test session.

Engines take tens of seconds to start on two CPU cores, so every engine is started once per
session: ``cluster`` (a router, one prefill and one decode worker over real Redis and NIXL) and
``reference`` (a plain engine without KV transfer, for output comparisons).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis

from kv_transfer import allocate_port
from pdserve.config import PdserveConfig
from pdserve.launcher import ClusterSpec, LocalCluster, start_redis
from pdserve.models import cache_root, make_tiny_llama
from pdserve.v1 import worker_pb2, worker_pb2_grpc

TEST_MAX_MODEL_LEN = 1024


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A tiny random Llama (head_dim 64) with the default model's tokenizer, made once."""
    return make_tiny_llama(
        cache_root() / "models" / "tiny-llama-test", max_position_embeddings=2048
    )


def engine_config(model: Path) -> PdserveConfig:
    config = PdserveConfig()
    config.model.path = str(model)
    config.model.max_model_len = TEST_MAX_MODEL_LEN
    config.worker.enforce_eager = True  # no graph compilation: faster start-up on 2 cores
    config.worker.kv_cache_gib = 1
    return config


@pytest.fixture(scope="session")
def make_engine_config() -> Callable[[Path], PdserveConfig]:
    """``engine_config`` for test modules that start clusters of their own."""
    return engine_config


@pytest.fixture(scope="session")
def cluster(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Router + 1 prefill + 1 decode worker + redis-server, shared by the whole session."""
    spec = ClusterSpec(
        config=engine_config(tiny_model),
        num_prefill=1,
        num_decode=1,
        router_port=allocate_port("127.0.0.1"),
        router_http_port=allocate_port("127.0.0.1"),
        cpu_bind=False,
        log_dir=tmp_path_factory.mktemp("cluster-logs"),
    )
    with LocalCluster(spec) as running:
        yield running


@pytest.fixture(scope="session")
def reference(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[worker_pb2_grpc.DecodeWorkerStub]:
    """A plain engine (no KV connector) behind the DecodeWorker service, in its own Redis."""
    logs = tmp_path_factory.mktemp("reference-logs")
    redis_proc, redis_url = start_redis(logs / "redis.log")
    config_path = logs / "config.yaml"
    import yaml

    config = engine_config(tiny_model)
    config.redis.url = redis_url
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    port = allocate_port("127.0.0.1")
    log = (logs / "worker.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "decode_worker",
            "--config",
            str(config_path),
            "--worker-id",
            "reference",
            "--port",
            str(port),
            "--no-kv-transfer",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PDSERVE_ADVERTISE_HOST="127.0.0.1"),
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + 600
    try:
        while client.hget("pdserve:worker:reference", "state") != "ready":
            if proc.poll() is not None:
                raise RuntimeError(f"the reference engine exited; see {logs / 'worker.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError("the reference engine did not start in 600 s")
            time.sleep(0.2)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield worker_pb2_grpc.DecodeWorkerStub(channel)
        channel.close()
    finally:
        client.close()
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
        redis_proc.terminate()
        redis_proc.wait()


@pytest.fixture(scope="session")
def worker_status() -> Callable[[LocalCluster, str], worker_pb2.WorkerStatus]:
    """A function that reads GetStatus of one of a cluster's workers."""
    return _worker_status


def _worker_status(cluster: LocalCluster, worker_id: str) -> worker_pb2.WorkerStatus:
    endpoint = cluster.worker_endpoints[worker_id]
    with grpc.insecure_channel(endpoint) as channel:
        if worker_id.startswith("prefill"):
            return worker_pb2_grpc.PrefillWorkerStub(channel).GetStatus(
                worker_pb2.GetStatusRequest(), timeout=10
            )
        return worker_pb2_grpc.DecodeWorkerStub(channel).GetStatus(
            worker_pb2.GetStatusRequest(), timeout=10
        )

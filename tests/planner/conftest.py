"""Fixtures of the planner tests: a real redis-server on a free port, and builders of signals."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def planner_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this test session (no persistence), as a URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (make system-deps installs it)")
    workdir: Path = tmp_path_factory.mktemp("planner-redis")
    for _ in range(3):  # the free port may be taken between probing and binding
        port = _free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10.0
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = bool(client.ping())
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        if ready:
            try:
                yield f"redis://127.0.0.1:{port}/0"
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            return
        proc.kill()
        proc.wait(timeout=10)
    pytest.fail("redis-server did not start")


@pytest.fixture
async def planner_redis(planner_redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client on an emptied database."""
    client = Redis.from_url(planner_redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()

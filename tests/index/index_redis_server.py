"""Starts and stops real redis-server processes for the index tests (through the launcher's
``start_redis``, the same start-up ``pdserve up`` uses)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from kv_transfer import allocate_port
from pdserve.launcher import start_redis


def free_port() -> int:
    return allocate_port("127.0.0.1")


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_redis_server(workdir: Path) -> RedisServer:
    """Starts ``redis-server`` on a free port, without persistence; waits until it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    process, url = start_redis(workdir / "redis.log")
    return RedisServer(url, process)

"""Fixtures of the index tests: a real redis-server on a free port, started once per session."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from index_redis_server import RedisServer, start_redis_server

from pdserve.index import RedisIndex


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
async def redis_index(redis_url: str) -> AsyncIterator[RedisIndex]:
    """A Redis index in a namespace of its own, so tests never see each other's entries."""
    index = RedisIndex.from_url(redis_url, namespace=f"test:{uuid.uuid4().hex[:8]}")
    yield index
    await index.aclose()

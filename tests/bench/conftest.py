"""Fixtures of the benchmark's tests: scripted gRPC routers (see bench_scripted_router.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bench_scripted_router import ScriptedRouter


@pytest.fixture(scope="session")
def scripted_router() -> Iterator[ScriptedRouter]:
    """One scripted router for the whole session; tests keep apart by model tag."""
    router = ScriptedRouter()
    router.start()
    yield router
    router.stop()


@pytest.fixture(scope="session")
def second_scripted_router() -> Iterator[ScriptedRouter]:
    """Another scripted router, for comparison runs."""
    router = ScriptedRouter()
    router.start()
    yield router
    router.stop()

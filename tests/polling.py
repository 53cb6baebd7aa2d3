"""Waiting for a condition in tests: poll it with a deadline; on timeout an ``AssertionError``
names what was awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["wait_for", "wait_until"]


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.2) -> Any:
    """Calls ``check`` every ``every_s`` until it returns something truthy, and returns that;
    fails naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


async def wait_until(
    condition: Callable[[], Awaitable[Any] | Any], timeout_s: float, what: str | Callable[[], str],
    every_s: float = 0.1,
) -> Any:
    """Polls ``condition`` (plain or async) until it returns something truthy, and returns that;
    fails naming ``what`` after ``timeout_s`` (a callable is asked then, so the message can
    show the last state seen)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            told = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {told}")
        await asyncio.sleep(every_s)

"""Latency and token observations of a running engine, taken from outside the worker's code.

:func:`instrument_engine` wraps one engine's ``generate`` (the method the gRPC servicers stream
from) so every request reports its time to first token, its inter-token gaps and its token
count to a :class:`TokenObserver`. The wrapper passes every output through unchanged, and
closing it closes the engine's stream (which aborts an unfinished request), as before.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

__all__ = ["TokenObserver", "instrument_engine", "observe_stream"]


class TokenObserver(Protocol):
    """Receives per-request observations."""

    def observe_first_token(self, seconds: float) -> None: ...

    def observe_next_tokens(self, seconds: float, num_tokens: int) -> None: ...

    def add_generated(self, num_tokens: int) -> None: ...

    def add_request(self) -> None: ...


def _num_new_tokens(output: Any) -> int:
    outputs = getattr(output, "outputs", None) or []
    return len(outputs[0].token_ids) if outputs else 0


async def observe_stream(
    stream: AsyncGenerator[Any, None],
    observer: TokenObserver,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncGenerator[Any, None]:
    """Yields ``stream``'s delta outputs, reporting their timing to ``observer``."""
    started = clock()
    previous: float | None = None
    try:
        async for output in stream:
            num_tokens = _num_new_tokens(output)
            if num_tokens:
                now = clock()
                if previous is None:
                    observer.observe_first_token(now - started)
                    if num_tokens > 1:
                        observer.observe_next_tokens(0.0, num_tokens - 1)
                else:
                    observer.observe_next_tokens(now - previous, num_tokens)
                previous = now
                observer.add_generated(num_tokens)
            yield output
    finally:
        await stream.aclose()
        observer.add_request()


def instrument_engine(engine: Any, observer: TokenObserver) -> None:
    """Makes ``engine.generate`` report to ``observer`` (idempotent)."""
    if getattr(engine, "_pdserve_instrumented", False):
        return
    original = engine.generate

    def generate(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        return observe_stream(original(*args, **kwargs), observer)

    engine.generate = generate
    engine._pdserve_instrumented = True

"""Service-level objectives of a benchmark run and the duration syntax they are written in.

An SLO string is a comma-separated list of ``name=duration`` pairs, e.g. ``ttft=500ms,tpot=50ms``.
Names: ``ttft`` (time to first token), ``tpot`` (time per output token), ``itl`` (the largest
inter-token gap of the request), ``e2e`` (end-to-end latency; ``e2el`` is accepted as in
``vllm bench serve``). Durations carry a unit: ``us``, ``ms`` or ``s`` (``500ms``, ``0.5s``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["SLO", "SLO_NAMES", "parse_duration", "parse_slo"]

SLO_NAMES = ("ttft", "tpot", "itl", "e2e")
"""The metrics an SLO can bound."""

_ALIASES = {"e2el": "e2e"}
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|ms|s)\s*$")


def parse_duration(text: str) -> float:
    """Parses ``500ms``, ``0.5s`` or ``250us`` into seconds.

    Raises:
        ValueError: ``text`` is not a non-negative number followed by ``us``, ``ms`` or ``s``.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 500ms or 0.5s")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite duration")
    return value


@dataclass(frozen=True)
class SLO:
    """Latency bounds a request must all meet to count towards goodput; None means unbounded."""

    ttft_s: float | None = None
    """Bound on the time to first token."""
    tpot_s: float | None = None
    """Bound on the time per output token; requests with one output token have TPOT 0."""
    itl_s: float | None = None
    """Bound on every inter-token gap of the request (its largest one)."""
    e2e_s: float | None = None
    """Bound on the end-to-end latency."""

    def __post_init__(self) -> None:
        for name in SLO_NAMES:
            value = getattr(self, f"{name}_s")
            if value is not None and not value > 0:
                raise ValueError(f"the {name} SLO must be > 0, got {value}")

    @property
    def is_empty(self) -> bool:
        """True when no bound is set (goodput is then not computed)."""
        return all(getattr(self, f"{name}_s") is None for name in SLO_NAMES)

    def as_dict(self) -> dict[str, float]:
        """The bounds that are set, by name, in seconds."""
        out: dict[str, float] = {}
        for name in SLO_NAMES:
            value = getattr(self, f"{name}_s")
            if value is not None:
                out[name] = value
        return out

    def __str__(self) -> str:
        return ",".join(f"{k}={v * 1000:g}ms" for k, v in self.as_dict().items()) or "none"


def parse_slo(text: str) -> SLO:
    """Parses ``ttft=500ms,tpot=50ms,itl=100ms,e2e=10s`` (any subset, any order) into an SLO.

    Raises:
        ValueError: a pair is not ``name=duration``, a name is unknown or given twice, or a
            duration is malformed or not positive. The message names the offending part.
    """
    bounds: dict[str, float] = {}
    for raw in text.split(","):
        pair = raw.strip()
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        name = _ALIASES.get(name.strip().lower(), name.strip().lower())
        if not sep:
            raise ValueError(f"{pair!r} is not name=duration, e.g. ttft=500ms")
        if name not in SLO_NAMES:
            raise ValueError(f"unknown SLO {name!r}; choose from {', '.join(SLO_NAMES)}")
        if name in bounds:
            raise ValueError(f"the {name} SLO is given twice")
        seconds = parse_duration(value)
        if seconds <= 0:
            raise ValueError(f"the {name} SLO must be > 0, got {value.strip()!r}")
        bounds[name] = seconds
    if not bounds:
        raise ValueError(f"{text!r} sets no SLO; write e.g. ttft=500ms,tpot=50ms")
    return SLO(**{f"{k}_s": v for k, v in bounds.items()})

"""Arrival processes: when each request (or session) of a run is sent, as offsets from the start.

- ``rate=inf``: everything at once; with a concurrency cap this is a closed loop of
  ``concurrency`` clients, each sending its next request when the previous one finishes.
- ``burstiness=1``: a Poisson process (exponential gaps with mean ``1/rate``).
- other ``burstiness``: gamma-distributed gaps with shape ``burstiness`` and the same mean, as
  ``vllm bench serve --burstiness``: below 1 requests come in bursts, above 1 they are more
  regular, ``inf`` gives constant gaps of ``1/rate``.

As in vLLM, the cumulative offsets are rescaled by default so that the last one is exactly
``n / rate``: the realised rate then equals the configured one for every seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ArrivalProcess", "arrival_offsets"]


@dataclass(frozen=True)
class ArrivalProcess:
    """A seeded arrival process."""

    rate: float = math.inf
    """Mean arrivals per second; ``inf`` sends everything at once."""
    burstiness: float = 1.0
    """Gamma shape of the gaps: 1 is Poisson, < 1 burstier, > 1 more regular, inf constant."""
    seed: int = 0
    """Seed of the gap sampler; the same seed gives the same schedule."""
    normalize: bool = True
    """Rescale the schedule so that the last arrival is at exactly ``n / rate``."""

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0 requests/s (inf: no pacing), got {self.rate}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness}")

    def offsets(self, num: int) -> list[float]:
        """Send offsets in seconds of ``num`` arrivals, non-decreasing."""
        return arrival_offsets(num, self.rate, self.burstiness, self.seed, self.normalize)

    def describe(self) -> str:
        """A one-line human description, e.g. ``Poisson at 4 req/s``."""
        if math.isinf(self.rate):
            return "all at once"
        if self.burstiness == 1.0:
            return f"Poisson at {self.rate:g} req/s"
        if math.isinf(self.burstiness):
            return f"constant gaps at {self.rate:g} req/s"
        return f"gamma (burstiness {self.burstiness:g}) at {self.rate:g} req/s"


def arrival_offsets(
    num: int,
    rate: float,
    burstiness: float = 1.0,
    seed: int = 0,
    normalize: bool = True,
) -> list[float]:
    """Send offsets in seconds of ``num`` arrivals of the process described in the module doc.

    Raises:
        ValueError: ``num < 0``, ``rate <= 0`` or ``burstiness <= 0``.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s (inf: no pacing), got {rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if num == 0:
        return []
    if math.isinf(rate):
        return [0.0] * num
    if math.isinf(burstiness):
        gaps = np.full(num, 1.0 / rate)
    else:
        rng = np.random.default_rng(seed)
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=num)
    offsets = np.cumsum(gaps)
    if normalize and offsets[-1] > 0:
        offsets = offsets * ((num / rate) / offsets[-1])
    return [float(x) for x in offsets]

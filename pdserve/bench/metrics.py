"""Benchmark metrics: pure functions over request records (no I/O, no clock).

Definitions follow ``vllm bench serve`` (``vllm/benchmarks/serve.py``, ``calculate_metrics``):

- TTFT: first chunk's arrival minus the send time.
- ITL: every gap between two consecutive chunks of a request; all requests' gaps are pooled.
- E2E: last chunk's arrival minus the send time (so ``E2E = TTFT + sum(ITL)``).
- TPOT: ``(E2E - TTFT) / (output_tokens - 1)`` for requests with more than one output token;
  only those requests enter the TPOT statistics. For goodput a request with one output token
  has TPOT 0, as in vLLM.
- Throughput: completed requests, their prompt tokens and their output tokens divided by the run's
  duration. Failed requests count towards none of them.
- Goodput: completed requests that meet every SLO given (``value <= bound``), per second of
  the run. The ITL SLO (not in vLLM) bounds the request's largest inter-token gap.

Statistics over an empty set are None (vLLM reports 0). Percentiles use numpy's linear
interpolation, as vLLM does.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pdserve.bench.record import STATUS_OK, RequestRecord
from pdserve.bench.slo import SLO

__all__ = [
    "DEFAULT_PERCENTILES",
    "LatencyStats",
    "Summary",
    "e2e_s",
    "itls_s",
    "latency_stats",
    "meets_slo",
    "output_tokens",
    "percentile_key",
    "summarize",
    "throughput_timeline",
    "tpot_s",
    "ttft_s",
]

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)
"""Percentiles reported unless others are asked for."""


def ttft_s(record: RequestRecord) -> float | None:
    """Time to first token in seconds, None if no chunk arrived."""
    if not record.chunk_s:
        return None
    return record.chunk_s[0] - record.send_s


def itls_s(record: RequestRecord) -> list[float]:
    """The request's inter-token latencies: gaps between consecutive chunks, in seconds."""
    times = record.chunk_s
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def e2e_s(record: RequestRecord) -> float | None:
    """End-to-end latency in seconds (send to last chunk), None if no chunk arrived."""
    if not record.chunk_s:
        return None
    return record.chunk_s[-1] - record.send_s


def output_tokens(record: RequestRecord) -> int:
    """Output tokens of the request: the router's usage count, else the token ids received."""
    if record.completion_tokens > 0:
        return record.completion_tokens
    return sum(record.chunk_tokens)


def tpot_s(record: RequestRecord) -> float | None:
    """Time per output token after the first, in seconds; None unless output_tokens > 1."""
    num_tokens = output_tokens(record)
    ttft, e2e = ttft_s(record), e2e_s(record)
    if num_tokens <= 1 or ttft is None or e2e is None:
        return None
    return (e2e - ttft) / (num_tokens - 1)


def meets_slo(record: RequestRecord, slo: SLO) -> bool:
    """True when a successful request meets every bound of ``slo`` (bounds are inclusive)."""
    if not record.success:
        return False
    ttft, e2e = ttft_s(record), e2e_s(record)
    assert ttft is not None and e2e is not None  # a successful record has chunks
    if slo.ttft_s is not None and ttft > slo.ttft_s:
        return False
    if slo.tpot_s is not None and (tpot_s(record) or 0.0) > slo.tpot_s:
        return False
    if slo.itl_s is not None and max(itls_s(record), default=0.0) > slo.itl_s:
        return False
    return not (slo.e2e_s is not None and e2e > slo.e2e_s)


def percentile_key(p: float) -> str:
    """The key a percentile is reported under: ``p50``, ``p99``, ``p99.9``."""
    return f"p{p:g}"


@dataclass(frozen=True)
class LatencyStats:
    """Distribution of one latency metric, in milliseconds (None over an empty set)."""

    count: int
    mean_ms: float | None
    median_ms: float | None
    std_ms: float | None
    max_ms: float | None
    percentiles_ms: dict[str, float | None] = field(default_factory=dict)
    """By :func:`percentile_key`, e.g. ``{"p50": 12.5, "p99": 40.1}``."""


def latency_stats(values_s: Sequence[float], percentiles: Iterable[float]) -> LatencyStats:
    """Mean, median, standard deviation, max and percentiles of ``values_s`` (seconds) in ms."""
    keys = [percentile_key(p) for p in percentiles]
    if not values_s:
        return LatencyStats(0, None, None, None, None, dict.fromkeys(keys))
    arr = np.asarray(values_s, dtype=float) * 1000.0
    return LatencyStats(
        count=len(values_s),
        mean_ms=float(np.mean(arr)),
        median_ms=float(np.median(arr)),
        std_ms=float(np.std(arr)),
        max_ms=float(np.max(arr)),
        percentiles_ms={
            percentile_key(p): float(np.percentile(arr, p)) for p in percentiles
        },
    )


@dataclass(frozen=True)
class Summary:
    """The aggregate result of one target's requests in one run."""

    num_requests: int
    completed: int
    failed: int
    errors: dict[str, int]
    """Failed requests by status code name; ``INCOMPLETE`` for an OK stream that lacked its
    tokens or its final message."""
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    cached_input_tokens: int
    request_throughput: float
    """Completed requests per second."""
    input_throughput: float
    """Prompt tokens of completed requests per second."""
    output_throughput: float
    """Output tokens of completed requests per second."""
    total_token_throughput: float
    """Input plus output tokens per second."""
    goodput: float | None
    """Requests per second that met every SLO; None when no SLO was given."""
    good_requests: int | None
    slo: dict[str, float]
    """The SLO bounds in seconds, by name."""
    max_output_tokens_per_s: float
    """Most output tokens received in one one-second bucket."""
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2e: LatencyStats

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-serialisable dict."""
        return asdict(self)


def summarize(
    records: Sequence[RequestRecord],
    duration_s: float,
    slo: SLO | None = None,
    percentiles: Iterable[float] = DEFAULT_PERCENTILES,
) -> Summary:
    """Aggregates ``records`` of a run that lasted ``duration_s`` seconds.

    Raises:
        ValueError: ``duration_s`` is not positive.
    """
    if not duration_s > 0 or not math.isfinite(duration_s):
        raise ValueError(f"duration_s must be a positive number, got {duration_s}")
    pcts = tuple(percentiles)
    done = [r for r in records if r.success]
    errors = Counter(
        r.status if r.status != STATUS_OK else "INCOMPLETE" for r in records if not r.success
    )
    ttfts = [v for r in done if (v := ttft_s(r)) is not None]
    e2es = [v for r in done if (v := e2e_s(r)) is not None]
    tpots = [v for r in done if (v := tpot_s(r)) is not None]
    itls = [gap for r in done for gap in itls_s(r)]
    total_in = sum(r.prompt_tokens for r in done)
    total_out = sum(output_tokens(r) for r in done)
    good: int | None = None
    if slo is not None and not slo.is_empty:
        good = sum(1 for r in done if meets_slo(r, slo))
    _, tokens_per_s, _ = throughput_timeline(records, bucket_s=1.0)
    return Summary(
        num_requests=len(records),
        completed=len(done),
        failed=len(records) - len(done),
        errors=dict(sorted(errors.items())),
        duration_s=duration_s,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        cached_input_tokens=sum(r.cached_prompt_tokens for r in done),
        request_throughput=len(done) / duration_s,
        input_throughput=total_in / duration_s,
        output_throughput=total_out / duration_s,
        total_token_throughput=(total_in + total_out) / duration_s,
        goodput=None if good is None else good / duration_s,
        good_requests=good,
        slo=slo.as_dict() if slo is not None else {},
        max_output_tokens_per_s=max(tokens_per_s, default=0.0),
        ttft=latency_stats(ttfts, pcts),
        tpot=latency_stats(tpots, pcts),
        itl=latency_stats(itls, pcts),
        e2e=latency_stats(e2es, pcts),
    )


def throughput_timeline(
    records: Sequence[RequestRecord], bucket_s: float = 1.0
) -> tuple[list[float], list[float], list[float]]:
    """Output tokens/s and completed requests/s of successful requests over time.

    Time 0 is the earliest send time among ``records``. Returns the bucket start times, the
    output tokens received in each bucket and the requests completing in each bucket, both
    divided by ``bucket_s`` (so they are rates).
    """
    if bucket_s <= 0:
        raise ValueError(f"bucket_s must be > 0, got {bucket_s}")
    done = [r for r in records if r.success]
    if not done:
        return [], [], []
    start = min(r.send_s for r in records)
    end = max(r.chunk_s[-1] for r in done)
    num_buckets = int((end - start) // bucket_s) + 1
    tokens = [0.0] * num_buckets
    finished = [0.0] * num_buckets
    for r in done:
        for t, n in zip(r.chunk_s, r.chunk_tokens, strict=False):
            tokens[min(int((t - start) // bucket_s), num_buckets - 1)] += n
        finished[min(int((r.chunk_s[-1] - start) // bucket_s), num_buckets - 1)] += 1
    starts = [i * bucket_s for i in range(num_buckets)]
    return starts, [n / bucket_s for n in tokens], [n / bucket_s for n in finished]

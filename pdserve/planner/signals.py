"""What the planner sees of the fleet: one ``FleetSignals`` per decision interval.

Two Redis sources feed it, both under the namespace prefix ``{ns}`` (default ``pdserve``):

``{ns}:requests`` (stream)
    One entry per finished request, appended by the router through
    :func:`publish_request_record` and capped near 100,000 entries (``MAXLEN ~``). Fields (all
    strings): ``t`` (unix time the request arrived), ``prompt_tokens``, ``output_tokens``,
    ``ttft_s``, ``itl_s`` (the request's mean inter-token latency), ``ok`` (``1``/``0``).
    Entry ids are Redis server time, so the window is cut on the server's clock.

The worker registry
    Read through :class:`pdserve.registry.Registry` (its module documents the key schema):
    live registrations with their published load; expired ones are skipped.

The request rate is measured on completions (a record is written when a request ends), which
equals the arrival rate in steady state and lags it by about one request duration in a ramp.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis

from pdserve.config import SLOConfig
from pdserve.registry import Registry, WorkerInfo

__all__ = [
    "DEFAULT_NAMESPACE",
    "POOLS",
    "REQUEST_STREAM_MAXLEN",
    "FleetSignals",
    "RedisSignalSource",
    "RequestRecord",
    "SignalSource",
    "WorkerLoad",
    "percentile",
    "publish_request_record",
    "publish_request_records",
    "request_stream_key",
    "worker_key",
    "workers_key",
]

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "pdserve"
REQUEST_STREAM_MAXLEN = 100_000
POOLS: tuple[str, str] = ("prefill", "decode")


def request_stream_key(namespace: str = DEFAULT_NAMESPACE) -> str:
    """Key of the stream of finished requests."""
    return f"{namespace}:requests"


def workers_key(namespace: str = DEFAULT_NAMESPACE) -> str:
    """Key of the set listing registered worker ids."""
    return f"{namespace}:workers"


def worker_key(worker_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Key of one worker's registration hash."""
    return f"{namespace}:worker:{worker_id}"


@dataclass(frozen=True)
class RequestRecord:
    """One finished request, as the router saw it."""

    t: float
    """Unix time the request arrived at the router."""
    prompt_tokens: int
    """Prompt length in tokens."""
    output_tokens: int
    """Tokens generated."""
    ttft_s: float
    """Time to first token."""
    itl_s: float
    """Mean inter-token latency of the request (0 when it produced fewer than two tokens)."""
    ok: bool = True
    """False when the request failed; failed requests count toward the rate, not latencies."""

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        return {
            "t": repr(float(self.t)),
            "prompt_tokens": str(int(self.prompt_tokens)),
            "output_tokens": str(int(self.output_tokens)),
            "ttft_s": repr(float(self.ttft_s)),
            "itl_s": repr(float(self.itl_s)),
            "ok": "1" if self.ok else "0",
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> RequestRecord:
        """Parses a stream entry (bytes or str keys); raises ``ValueError`` on a malformed one."""
        f = {_text(k): _text(v) for k, v in fields.items()}
        try:
            return cls(
                t=float(f["t"]),
                prompt_tokens=int(f["prompt_tokens"]),
                output_tokens=int(f["output_tokens"]),
                ttft_s=float(f["ttft_s"]),
                itl_s=float(f["itl_s"]),
                ok=f.get("ok", "1") == "1",
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"malformed request record {f!r}: {exc}") from exc


async def publish_request_record(
    redis: Redis, record: RequestRecord, namespace: str = DEFAULT_NAMESPACE
) -> None:
    """Appends ``record`` to ``{namespace}:requests`` (``XADD ... MAXLEN ~ 100000``)."""
    await publish_request_records(redis, [record], namespace)


async def publish_request_records(
    redis: Redis, records: Sequence[RequestRecord], namespace: str = DEFAULT_NAMESPACE
) -> None:
    """Appends ``records`` to ``{namespace}:requests`` in one pipelined round trip.

    The router's :class:`router.request_log.RequestLog` calls this for the requests that
    finished since its last flush; the planner reads the stream back.
    """
    if not records:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for record in records:
            pipe.xadd(
                request_stream_key(namespace),
                record.to_fields(),  # type: ignore[arg-type]
                maxlen=REQUEST_STREAM_MAXLEN,
                approximate=True,
            )
        await pipe.execute()


@dataclass(frozen=True)
class WorkerLoad:
    """One live worker's registration, numbers parsed."""

    worker_id: str
    role: str
    state: str
    endpoint: str = ""
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    queued_prefill_tokens: int = 0
    updated_at: float = 0.0

    @classmethod
    def from_info(cls, info: WorkerInfo) -> WorkerLoad:
        """The planner's view of a registration read through :class:`pdserve.registry.Registry`."""
        return cls(
            worker_id=info.worker_id,
            role=info.role,
            state=info.state,
            endpoint=info.endpoint,
            num_running=info.num_running,
            num_waiting=info.num_waiting,
            kv_usage=info.kv_usage if math.isfinite(info.kv_usage) else 0.0,
            queued_prefill_tokens=info.queued_prefill_tokens,
            updated_at=info.updated_at,
        )


def _zero_pools() -> dict[str, int]:
    return dict.fromkeys(POOLS, 0)


@dataclass(frozen=True)
class FleetSignals:
    """The fleet over one window: demand, latencies against the SLOs, and pool load.

    Latency percentiles are ``None`` when no request finished in the window.
    """

    at_s: float
    """When the window ended (unix time)."""
    window_s: float
    """Length of the window the request figures cover."""
    ttft_slo_s: float
    """The TTFT p90 target."""
    itl_slo_s: float
    """The inter-token latency p90 target."""
    num_requests: int = 0
    """Requests finished in the window, failed ones included."""
    num_failed: int = 0
    """Requests that failed in the window."""
    arrival_rate_rps: float = 0.0
    """Requests per second over the window."""
    mean_prompt_tokens: float = 0.0
    mean_output_tokens: float = 0.0
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    itl_p50_s: float | None = None
    itl_p90_s: float | None = None
    queued_prefill_tokens: int = 0
    """Prompt tokens waiting on prefill workers, summed."""
    decode_kv_usage: float = 0.0
    """Mean KV-cache usage (0..1) of the ready decode workers."""
    num_running: dict[str, int] = field(default_factory=_zero_pools)
    """Requests running, per pool."""
    num_waiting: dict[str, int] = field(default_factory=_zero_pools)
    """Requests waiting in engine queues, per pool."""
    replicas: dict[str, int] = field(default_factory=_zero_pools)
    """Ready (not draining) workers per pool, as registered."""

    @property
    def prefill_token_rate(self) -> float:
        """Prompt tokens arriving per second."""
        return self.arrival_rate_rps * self.mean_prompt_tokens

    @property
    def ttft_ratio(self) -> float | None:
        """TTFT p90 over its SLO (>1 is a violation)."""
        return None if self.ttft_p90_s is None else self.ttft_p90_s / self.ttft_slo_s

    @property
    def itl_ratio(self) -> float | None:
        """ITL p90 over its SLO (>1 is a violation)."""
        return None if self.itl_p90_s is None else self.itl_p90_s / self.itl_slo_s

    @property
    def is_idle(self) -> bool:
        """No request arrived, nothing is queued and nothing is running."""
        return (
            self.num_requests == 0
            and self.queued_prefill_tokens == 0
            and sum(self.num_running.values()) == 0
            and sum(self.num_waiting.values()) == 0
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for logs."""
        return asdict(self)

    @classmethod
    def build(
        cls,
        *,
        at_s: float,
        window_s: float,
        slo: SLOConfig,
        records: Sequence[RequestRecord],
        workers: Sequence[WorkerLoad],
    ) -> FleetSignals:
        """Aggregates request records of one window and the live workers' load."""
        ok = [r for r in records if r.ok]
        n = len(records)
        num_running = _zero_pools()
        num_waiting = _zero_pools()
        replicas = _zero_pools()
        queued = 0
        kv: list[float] = []
        for w in workers:
            if w.role not in num_running:
                continue
            num_running[w.role] += w.num_running
            num_waiting[w.role] += w.num_waiting
            if w.state == "ready":
                replicas[w.role] += 1
                if w.role == "decode":
                    kv.append(w.kv_usage)
            if w.role == "prefill":
                queued += w.queued_prefill_tokens
        ttfts = sorted(r.ttft_s for r in ok)
        itls = sorted(r.itl_s for r in ok if r.output_tokens > 1)
        return cls(
            at_s=at_s,
            window_s=window_s,
            ttft_slo_s=slo.ttft_ms / 1000.0,
            itl_slo_s=slo.itl_ms / 1000.0,
            num_requests=n,
            num_failed=n - len(ok),
            arrival_rate_rps=n / window_s if window_s > 0 else 0.0,
            mean_prompt_tokens=_mean([r.prompt_tokens for r in records]),
            mean_output_tokens=_mean([r.output_tokens for r in records]),
            ttft_p50_s=percentile(ttfts, 50),
            ttft_p90_s=percentile(ttfts, 90),
            itl_p50_s=percentile(itls, 50),
            itl_p90_s=percentile(itls, 90),
            queued_prefill_tokens=queued,
            decode_kv_usage=_mean(kv),
            num_running=num_running,
            num_waiting=num_waiting,
            replicas=replicas,
        )


class SignalSource(Protocol):
    """Where the planner reads the fleet from."""

    async def read(self) -> FleetSignals:
        """The signals of the window that ends now."""
        ...


class RedisSignalSource:
    """Builds ``FleetSignals`` from the request stream and the worker registry in Redis.

    Reads only; it never removes stale registry members (the registry's owner does).
    """

    def __init__(
        self,
        redis: Redis,
        slo: SLOConfig,
        *,
        window_s: float = 30.0,
        namespace: str = DEFAULT_NAMESPACE,
        max_records: int = 20_000,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        self._redis = redis
        self._slo = slo
        self._window_s = window_s
        self._namespace = namespace
        self._max_records = max_records

    async def read(self) -> FleetSignals:
        """Reads the last ``window_s`` of requests and the live workers."""
        seconds, micros = await self._redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        records = await self.read_records(now_ms - int(self._window_s * 1000))
        workers = await self.read_workers()
        return FleetSignals.build(
            at_s=now_ms / 1000.0,
            window_s=self._window_s,
            slo=self._slo,
            records=records,
            workers=workers,
        )

    async def read_records(self, since_ms: int) -> list[RequestRecord]:
        """Request records whose stream id is at or after ``since_ms`` (newest ``max_records``)."""
        entries = (
            await self._redis.xrevrange(
                request_stream_key(self._namespace),
                max="+",
                min=str(max(since_ms, 0)),
                count=self._max_records,
            )
            or []
        )
        if len(entries) >= self._max_records:
            logger.warning(
                "request window holds more than %d records; rates are undercounted",
                self._max_records,
            )
        records = []
        for entry_id, fields in entries:
            if not fields:
                continue
            try:
                records.append(RequestRecord.from_fields(fields))
            except ValueError as exc:
                logger.warning("skipping request record %s: %s", _text(entry_id), exc)
        return records

    async def read_workers(self) -> list[WorkerLoad]:
        """Live registered workers (expired registrations are skipped)."""
        registry = Registry(self._redis, namespace=self._namespace)
        return [WorkerLoad.from_info(info) for info in await registry.list_workers()]


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _mean(values: Sequence[float]) -> float:
    return float(sum(values)) / len(values) if values else 0.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(fields: Mapping[str, str], key: str, worker_id: str) -> float:
    raw = fields.get(key, "")
    if raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        logger.warning("worker %s: %s=%r is not a number; reading 0", worker_id, key, raw)
        return 0.0
    return value if math.isfinite(value) else 0.0

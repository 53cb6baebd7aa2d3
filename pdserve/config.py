"""pdserve's configuration: one dataclass per component, loaded from one YAML file.

Every process (router, workers, planner) reads the same file, the one ``--config`` or the
``PDSERVE_CONFIG`` environment variable names (on Kubernetes the chart mounts it from a ConfigMap).
Environment variables are read here and nowhere else:

- ``PDSERVE_CONFIG``: path of the YAML file.
- ``PDSERVE_REDIS_URL``: overrides ``redis.url``.
- ``PDSERVE_REDIS_PASSWORD``: password for Redis (kept out of the file, e.g. from a Secret).
- ``PDSERVE_ADVERTISE_HOST``: the address other processes use to reach this one (a pod IP).
- ``PDSERVE_MODEL_PATH``: overrides ``model.path``.

The YAML file mirrors the dataclasses::

    model: {path: /models/smollm2, name: smollm2-135m-instruct, dtype: auto, max_model_len: 2048}
    redis: {url: redis://redis:6379/0}
    router: {grpc_port: 50051, http_port: 8000, routing: {...}}
    worker: {grpc_port: 50060, nixl_port: 5600, kv_cache_gib: 1.0}
    slo: {ttft_ms: 2000, itl_ms: 200}
    planner: {...}

Unknown keys are rejected with the key's dotted path, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_ROUTER_GRPC_PORT = 50051
DEFAULT_ROUTER_HTTP_PORT = 8000
DEFAULT_WORKER_GRPC_PORT = 50060
DEFAULT_NIXL_PORT = 5600

Dtype = Literal["auto", "float32", "float16", "bfloat16"]


@dataclass
class ModelConfig:
    """The served model, identical on every worker."""

    path: str = ""
    """Local directory of a Hugging Face model (config, tokenizer, safetensors). Empty: the
    embedded default model (SmolLM2-135M-Instruct), converted once into the cache."""
    name: str = DEFAULT_MODEL_NAME
    """The name clients use in requests."""
    dtype: Dtype = "auto"
    """Weights and KV dtype; ``auto`` means float32 on CPU (bf16 is 4-5x slower there) and the
    checkpoint's dtype on GPU."""
    max_model_len: int = 2048
    """Largest prompt plus output, in tokens."""

    def __post_init__(self) -> None:
        if self.max_model_len < 16:
            raise ValueError(f"model.max_model_len must be >= 16, got {self.max_model_len}")
        if not self.name:
            raise ValueError("model.name must not be empty")


@dataclass
class RedisConfig:
    """Where the worker registry and the prefix-cache index live."""

    url: str = ""
    """``redis://host:port/db``. Empty in ``pdserve up``: a redis-server is started locally."""
    heartbeat_s: float = 1.0
    """How often a worker refreshes its registration."""
    ttl_s: float = 5.0
    """A worker that has not refreshed its registration for this long drops out of routing."""

    def __post_init__(self) -> None:
        if self.heartbeat_s <= 0:
            raise ValueError(f"redis.heartbeat_s must be > 0, got {self.heartbeat_s}")
        if self.ttl_s <= self.heartbeat_s:
            raise ValueError(
                f"redis.ttl_s ({self.ttl_s}) must exceed redis.heartbeat_s ({self.heartbeat_s})"
            )


@dataclass
class RoutingConfig:
    """How the router picks workers and decides whether to disaggregate."""

    prefix_weight: float = 1.0
    """Weight of the prefix-overlap scorer (share of the prompt a worker already caches)."""
    queue_weight: float = 0.5
    """Weight of the queued-prefill-work scorer."""
    load_weight: float = 0.5
    """Weight of the running-requests / KV-usage scorer."""
    disagg_min_uncached_tokens: int = 0
    """Prompts whose part not cached on the chosen decode worker is shorter than this go straight
    to decode (no prefill worker). 0: always disaggregate when a prefill worker exists."""
    policy: Literal["cache_aware", "round_robin"] = "cache_aware"
    """``cache_aware``: the scorers above over the prefix-cache index and the workers' load;
    ``round_robin``: take turns, ignoring cache and load (a baseline for comparisons)."""
    index_sweep_s: float = 5.0
    """How often the router drops index entries of workers whose registration has expired."""

    def __post_init__(self) -> None:
        if self.policy not in ("cache_aware", "round_robin"):
            raise ValueError(
                f"router.routing.policy must be cache_aware or round_robin, got {self.policy!r}"
            )
        if self.index_sweep_s <= 0:
            raise ValueError("router.routing.index_sweep_s must be > 0")
        for name in ("prefix_weight", "queue_weight", "load_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"router.routing.{name} must be >= 0, got {getattr(self, name)}")
        if self.disagg_min_uncached_tokens < 0:
            raise ValueError("router.routing.disagg_min_uncached_tokens must be >= 0")


@dataclass
class RouterConfig:
    """The router's front doors and limits."""

    host: str = "0.0.0.0"
    """Address the servers bind."""
    grpc_port: int = DEFAULT_ROUTER_GRPC_PORT
    """Port of the public gRPC ``pdserve.v1.Generation`` service."""
    http_port: int = DEFAULT_ROUTER_HTTP_PORT
    """Port of the OpenAI-compatible HTTP API and ``/metrics``; 0 disables it."""
    max_concurrent_requests: int = 256
    """Requests in flight beyond this are answered RESOURCE_EXHAUSTED."""
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest gRPC message accepted."""
    default_max_tokens: int = 16
    """max_tokens of requests that set none."""
    request_timeout_s: float = 600.0
    """Deadline of requests whose client sets none."""
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    def __post_init__(self) -> None:
        _check_port("router.grpc_port", self.grpc_port)
        if self.http_port:
            _check_port("router.http_port", self.http_port)
        if self.max_concurrent_requests < 1:
            raise ValueError("router.max_concurrent_requests must be >= 1")
        if self.default_max_tokens < 1:
            raise ValueError("router.default_max_tokens must be >= 1")
        if self.request_timeout_s <= 0:
            raise ValueError("router.request_timeout_s must be > 0")


@dataclass
class WorkerConfig:
    """A prefill or decode worker: its gRPC server and its engine."""

    host: str = "0.0.0.0"
    """Address the gRPC server binds."""
    grpc_port: int = DEFAULT_WORKER_GRPC_PORT
    """Port of the worker's internal gRPC service (0: any free port)."""
    nixl_port: int = DEFAULT_NIXL_PORT
    """NIXL side-channel port of the worker's engine (0: any free port)."""
    kv_cache_gib: float = 1.0
    """CPU KV-cache size in GiB (``VLLM_CPU_KVCACHE_SPACE``); ignored on GPU."""
    gpu_memory_utilization: float = 0.9
    """Share of GPU memory the engine may use; ignored on CPU."""
    max_num_seqs: int = 64
    """Largest number of requests the engine runs at once."""
    max_queued_requests: int = 256
    """Requests waiting beyond this are answered RESOURCE_EXHAUSTED."""
    enforce_eager: bool = False
    """Skip the engine's graph compilation: faster start-up (tests), slower steps."""
    cpu_threads_bind: str = ""
    """``VLLM_CPU_OMP_THREADS_BIND`` for the engine (e.g. ``0`` to pin it to core 0); empty: vLLM's
    default."""
    kv_events: bool = True
    """Publish the engine's KV-cache events and index them in Redis, for prefix-aware routing."""
    chunked_prefill: bool | None = None
    """Let the engine split long prompts over steps, mixed with other requests' decode steps.
    Empty (null): on with GPUs, off on CPUs, where vLLM's seeded sampling breaks on a split prompt
    and kills the engine. Set it true on a CPU only for greedy or unseeded traffic."""

    def __post_init__(self) -> None:
        if self.grpc_port:
            _check_port("worker.grpc_port", self.grpc_port)
        if self.nixl_port:
            _check_port("worker.nixl_port", self.nixl_port)
        if self.kv_cache_gib <= 0:
            raise ValueError(f"worker.kv_cache_gib must be > 0, got {self.kv_cache_gib}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("worker.gpu_memory_utilization must be in (0, 1]")
        if self.max_num_seqs < 1 or self.max_queued_requests < 1:
            raise ValueError("worker.max_num_seqs and worker.max_queued_requests must be >= 1")


@dataclass
class SLOConfig:
    """Service-level objectives the planner and the benchmark judge against."""

    ttft_ms: float = 2000.0
    """Time to first token, p90 target."""
    itl_ms: float = 200.0
    """Inter-token latency, p90 target."""

    def __post_init__(self) -> None:
        if self.ttft_ms <= 0 or self.itl_ms <= 0:
            raise ValueError("slo.ttft_ms and slo.itl_ms must be > 0")


@dataclass
class PoolBounds:
    """Bounds of one worker pool."""

    min: int = 1
    """Fewest workers (0 allows scale-to-zero)."""
    max: int = 4
    """Most workers."""

    def __post_init__(self) -> None:
        if self.min < 0 or self.max < self.min or self.max < 1:
            raise ValueError(f"pool bounds need 0 <= min <= max and max >= 1, got {self}")


@dataclass
class PlannerConfig:
    """The autoscaler of the prefill and decode pools."""

    interval_s: float = 10.0
    """Seconds between decisions."""
    cooldown_s: float = 60.0
    """Seconds after a change of a pool before it is changed again."""
    scale_down_hysteresis: float = 0.7
    """A pool shrinks only when its load would still be under this share of its SLO-derived
    capacity after the change."""
    max_total_workers: int = 8
    """Budget shared by both pools (GPUs on a cluster)."""
    prefill: PoolBounds = field(default_factory=PoolBounds)
    decode: PoolBounds = field(default_factory=PoolBounds)

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.cooldown_s < 0:
            raise ValueError("planner.interval_s must be > 0 and planner.cooldown_s >= 0")
        if not 0 < self.scale_down_hysteresis <= 1:
            raise ValueError("planner.scale_down_hysteresis must be in (0, 1]")
        if self.max_total_workers < self.prefill.min + self.decode.min:
            raise ValueError(
                f"planner.max_total_workers ({self.max_total_workers}) is below the pools' "
                f"minimums ({self.prefill.min} + {self.decode.min})"
            )


@dataclass
class PdserveConfig:
    """The whole configuration, one section per component."""

    model: ModelConfig = field(default_factory=ModelConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    slo: SLOConfig = field(default_factory=SLOConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PdserveConfig:
        """Builds a config from nested mappings; unknown keys raise ``ValueError``."""
        return _build(cls, data, "")

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> PdserveConfig:
        """Reads ``path`` (or ``$PDSERVE_CONFIG``; defaults if neither) and applies the
        environment overrides listed in the module docstring."""
        path = path or os.environ.get("PDSERVE_CONFIG") or None
        data: Mapping[str, Any] = {}
        if path:
            text = Path(path).read_text()
            loaded = yaml.safe_load(text) or {}
            if not isinstance(loaded, Mapping):
                raise ValueError(f"{path}: the config must be a mapping, got {type(loaded)}")
            data = loaded
        config = cls.from_dict(data)
        if url := os.environ.get("PDSERVE_REDIS_URL"):
            config.redis.url = url
        if model_path := os.environ.get("PDSERVE_MODEL_PATH"):
            config.model.path = model_path
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def redis_password() -> str | None:
    """The Redis password from ``PDSERVE_REDIS_PASSWORD``, if set."""
    return os.environ.get("PDSERVE_REDIS_PASSWORD") or None


def advertise_host(default: str = "127.0.0.1") -> str:
    """The address other processes reach this one at (``PDSERVE_ADVERTISE_HOST``)."""
    return os.environ.get("PDSERVE_ADVERTISE_HOST") or default


def _check_port(name: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"{name} must be a port in 1..65535, got {port}")


T = TypeVar("T")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    if not isinstance(data, Mapping):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s): {', '.join(prefix + k for k in unknown)}; "
            f"known under {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = fields[name].default_factory  # type: ignore[misc]
        if default is not dataclasses.MISSING and dataclasses.is_dataclass(default):
            kwargs[name] = _build(default, value or {}, f"{prefix}{name}.")  # type: ignore[arg-type]
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: {exc}") from exc

"""vLLM KV-connector configuration for each worker role.

Prefill workers are NIXL producers and decode workers NIXL consumers; on machines without a GPU
the KV buffer lives in host memory (``kv_buffer_device="cpu"``) and NIXL moves it over UCX
(TCP on loopback, RDMA between nodes that have it). Each engine also needs its own NIXL
side-channel address, given to vLLM through environment variables before the engine starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["prefill", "decode"]

#: Seconds a prefill engine holds blocks for a decode engine that has not pulled them yet.
DEFAULT_KV_LEASE_S = 30


@dataclass(frozen=True)
class ConnectorSpec:
    """How one engine takes part in KV transfer."""

    role: Role
    buffer_device: Literal["cpu", "cuda"]
    """Where the transfer buffer lives: ``cpu`` on CPU-only machines, ``cuda`` on GPUs."""
    side_channel_host: str
    """Address the decode side uses to reach this engine's NIXL side channel."""
    side_channel_port: int
    kv_lease_s: int = DEFAULT_KV_LEASE_S
    load_failure_policy: Literal["recompute", "fail"] = "recompute"
    """What a decode engine does when a pull fails: compute the prompt itself (never a wrong
    answer) or fail the request."""

    def __post_init__(self) -> None:
        if self.role not in ("prefill", "decode"):
            raise ValueError(f"connector role must be 'prefill' or 'decode', got {self.role!r}")
        if not 1 <= self.side_channel_port <= 65535:
            raise ValueError(f"side_channel_port must be in 1..65535, got {self.side_channel_port}")
        if self.kv_lease_s < 1:
            raise ValueError(f"kv_lease_s must be >= 1, got {self.kv_lease_s}")


def connector_config(spec: ConnectorSpec) -> dict[str, Any]:
    """The ``kv_transfer_config`` mapping for vLLM's engine arguments."""
    return {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_producer" if spec.role == "prefill" else "kv_consumer",
        "kv_buffer_device": spec.buffer_device,
        "kv_load_failure_policy": spec.load_failure_policy,
        "kv_connector_extra_config": {"kv_lease_duration": spec.kv_lease_s},
    }


def side_channel_env(spec: ConnectorSpec) -> dict[str, str]:
    """Environment variables vLLM's NIXL connector reads for its side channel. They must be set
    in the process that creates the engine, before it is created."""
    return {
        "VLLM_NIXL_SIDE_CHANNEL_HOST": spec.side_channel_host,
        "VLLM_NIXL_SIDE_CHANNEL_PORT": str(spec.side_channel_port),
    }

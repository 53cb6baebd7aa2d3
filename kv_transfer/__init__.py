"""The KV-cache handoff between prefill and decode workers.

It owns the contract both sides must agree on: the transfer-parameter message and its conversion
to and from vLLM's ``kv_transfer_params``, the KV-layout compatibility hash, the connector
configuration of each role, side-channel port allocation, and transfer counters.
"""

from kv_transfer.compat import KVLayout, compat_hash
from kv_transfer.connector import ConnectorSpec, connector_config, side_channel_env
from kv_transfer.errors import KVCompatibilityError, KVTransferError, KVVersionError
from kv_transfer.params import (
    CONTRACT_VERSION,
    check_params,
    num_blocks,
    params_from_vllm,
    params_to_vllm,
    release_params,
)
from kv_transfer.ports import allocate_port
from kv_transfer.stats import TransferStats

__all__ = [
    "CONTRACT_VERSION",
    "ConnectorSpec",
    "KVCompatibilityError",
    "KVLayout",
    "KVTransferError",
    "KVVersionError",
    "TransferStats",
    "allocate_port",
    "check_params",
    "compat_hash",
    "connector_config",
    "num_blocks",
    "params_from_vllm",
    "params_to_vllm",
    "release_params",
    "side_channel_env",
]

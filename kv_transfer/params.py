"""Conversion between vLLM's ``kv_transfer_params`` and ``pdserve.v1.KVTransferParams``.

The prefill engine returns a dictionary like ``{"do_remote_prefill": True, "remote_engine_id":
..., "remote_block_ids": [...], "remote_host": ..., "remote_port": ..., "remote_request_id": ...,
"tp_size": 1}``. pdserve carries it as a typed message with a contract version and the
compatibility hash of the prefill engine, and turns it back into the dictionary the decode
engine expects. Fields pdserve does not model are kept in ``extra_json`` and passed through.
"""

from __future__ import annotations

import json
from typing import Any

from kv_transfer.errors import KVCompatibilityError, KVTransferError, KVVersionError
from pdserve.v1 import kv_transfer_pb2

#: Version of the handoff contract this code speaks.
CONTRACT_VERSION = 1

_MODELED = {
    "do_remote_prefill",
    "do_remote_decode",
    "remote_engine_id",
    "remote_block_ids",
    "remote_host",
    "remote_port",
    "remote_request_id",
    "tp_size",
}


def params_from_vllm(params: dict[str, Any], compat: str) -> kv_transfer_pb2.KVTransferParams:
    """The message for a prefill engine's answer; raises ``KVTransferError`` when the answer
    lacks what a decode engine needs to pull."""
    missing = [k for k in ("remote_engine_id", "remote_host", "remote_port") if k not in params]
    if missing:
        raise KVTransferError(f"prefill engine returned kv_transfer_params without {missing}")
    raw_ids = params.get("remote_block_ids") or []
    # vLLM gives one list per KV-cache group (older versions a flat list for the single group).
    groups = raw_ids if raw_ids and isinstance(raw_ids[0], list | tuple) else [raw_ids]
    extra = {k: v for k, v in params.items() if k not in _MODELED}
    return kv_transfer_pb2.KVTransferParams(
        version=CONTRACT_VERSION,
        compat_hash=compat,
        engine_id=str(params["remote_engine_id"]),
        host=str(params["remote_host"]),
        port=int(params["remote_port"]),
        block_groups=[
            kv_transfer_pb2.BlockIdGroup(ids=[int(b) for b in group]) for group in groups
        ],
        remote_request_id=str(params.get("remote_request_id") or ""),
        tp_size=int(params.get("tp_size") or 1),
        extra_json=json.dumps(extra, sort_keys=True) if extra else "",
    )


def check_params(msg: kv_transfer_pb2.KVTransferParams, local_compat: str) -> None:
    """Raises unless a decode engine with ``local_compat`` can pull what ``msg`` describes."""
    if msg.version != CONTRACT_VERSION:
        raise KVVersionError(
            f"kv_transfer_params.version is {msg.version}; this worker speaks version "
            f"{CONTRACT_VERSION}"
        )
    if msg.compat_hash != local_compat:
        raise KVCompatibilityError(
            f"KV layouts differ: prefill engine {msg.engine_id!r} has compat_hash "
            f"{msg.compat_hash!r}, this decode engine has {local_compat!r}"
        )
    for i, group in enumerate(msg.block_groups):
        if len(set(group.ids)) != len(group.ids):
            raise KVTransferError(f"kv_transfer_params.block_groups[{i}] repeats a block id")
    if not msg.engine_id or not msg.host or not 1 <= msg.port <= 65535:
        raise KVTransferError(
            "kv_transfer_params needs engine_id, host and a port in 1..65535; got "
            f"engine_id={msg.engine_id!r} host={msg.host!r} port={msg.port}"
        )


def params_to_vllm(msg: kv_transfer_pb2.KVTransferParams) -> dict[str, Any]:
    """The ``kv_transfer_params`` dictionary a decode engine's request carries."""
    params: dict[str, Any] = json.loads(msg.extra_json) if msg.extra_json else {}
    params.update(
        do_remote_prefill=True,
        do_remote_decode=False,
        remote_engine_id=msg.engine_id,
        remote_block_ids=[list(group.ids) for group in msg.block_groups],
        remote_host=msg.host,
        remote_port=msg.port,
        remote_request_id=msg.remote_request_id,
        tp_size=msg.tp_size or 1,
    )
    return params


def num_blocks(msg: kv_transfer_pb2.KVTransferParams) -> int:
    """Blocks the decode side pulls (those of the first KV-cache group)."""
    return len(msg.block_groups[0].ids) if msg.block_groups else 0


def release_params(msg: kv_transfer_pb2.KVTransferParams) -> dict[str, Any]:
    """Parameters for ``AsyncLLM.notify_kv_transfer_request_rejected`` on a decode engine, which
    then tells the prefill engine to free the blocks at once."""
    return params_to_vllm(msg)

"""The KV-layout compatibility hash.

Two engines can exchange KV blocks only when their caches are laid out alike: same model
weights, KV dtype, block size, number of layers, KV heads and head size. Each worker computes this
hash from its engine's configuration, registers it, and puts it in every set of transfer
parameters; the router pairs only workers with equal hashes, and a decode worker refuses
parameters whose hash differs from its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class KVLayout:
    """What must match between a prefill and a decode engine for a KV handoff."""

    model_id: str
    """Identity of the weights (e.g. the model name plus a digest of its config.json)."""
    kv_dtype: str
    block_size: int
    num_layers: int
    num_kv_heads: int
    head_size: int
    tp_size: int = 1


def compat_hash(layout: KVLayout) -> str:
    """A short, stable hex digest of ``layout``."""
    blob = json.dumps(asdict(layout), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def describe(layout: KVLayout) -> str:
    """A one-line description for error messages."""
    return ", ".join(f"{k}={v}" for k, v in asdict(layout).items())

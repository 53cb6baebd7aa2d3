"""Block keys: the names under which the prefix-cache index stores KV blocks.

A prompt is cut into blocks of ``block_size`` tokens (the engines' KV block size: 128 on CPU,
16 on GPU); only full blocks get a key, the partial tail has none because an engine caches only
full blocks. Keys are chained, so a block's key names the whole prefix up to and including it::

    root   = blake2b-64(b"pdserve.blockkey.v1" | len(lora) | lora | len(salt) | salt)
    key[0] = blake2b-64(root     | tokens[0:B]   as little-endian uint32)
    key[i] = blake2b-64(key[i-1] | tokens[iB:(i+1)B] as little-endian uint32)

(each 64-bit key is fed to the next hash as 8 little-endian bytes). The extra keys (LoRA
adapter name, cache salt) only enter through the root, which makes every key of the chain
depend on them.

The router computes the keys from a prompt's token ids, the indexer from the token ids in the
engine's ``BlockStored`` events; both use this module, so the keys agree without depending on
the engine's own block hashes (whose seed and algorithm are the engine's business). Cost: about
20 us per 1,000 tokens on the development machines (``python benchmarks/index_lookup.py``).
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Sequence
from typing import NewType

__all__ = [
    "BlockKey",
    "block_keys",
    "chain_keys",
    "num_full_blocks",
    "root_key",
]

BlockKey = NewType("BlockKey", int)
"""A 64-bit chained block key (an unsigned int below 2**64)."""

_DOMAIN = b"pdserve.blockkey.v1"
_KEY_BYTES = 8

if array("I").itemsize != 4:  # pragma: no cover - every supported platform has 4-byte uint
    raise ImportError("pdserve.index.keys needs array('I') to hold 4-byte unsigned ints")


def _encode_extra(value: str | None) -> bytes:
    if value is None:
        return b"\xff\xff\xff\xff"  # distinct from the empty string
    data = value.encode("utf-8")
    return len(data).to_bytes(4, "little") + data


def root_key(lora_name: str | None = None, cache_salt: str | None = None) -> BlockKey:
    """The parent key of a chain's first block; it folds in the request's extra keys.

    Requests with a different LoRA adapter or cache salt get disjoint chains, as in the engine,
    whose prefix cache does not share blocks between them either.
    """
    digest = hashlib.blake2b(
        _DOMAIN + _encode_extra(lora_name) + _encode_extra(cache_salt), digest_size=_KEY_BYTES
    ).digest()
    return BlockKey(int.from_bytes(digest, "little"))


def num_full_blocks(num_tokens: int, block_size: int) -> int:
    """Blocks of ``block_size`` tokens that ``num_tokens`` tokens fill completely."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return num_tokens // block_size


def chain_keys(parent: BlockKey, token_ids: Sequence[int], block_size: int) -> list[BlockKey]:
    """Keys of the full blocks of ``token_ids``, chained from ``parent``.

    ``token_ids`` must start on a block boundary; a partial last block is ignored. Raises
    ``ValueError`` when a token id is not an unsigned 32-bit integer.
    """
    num_blocks = num_full_blocks(len(token_ids), block_size)
    if num_blocks == 0:
        return []
    try:
        packed = array("I", token_ids[: num_blocks * block_size])
    except (OverflowError, TypeError) as exc:
        raise ValueError(f"token ids must be unsigned 32-bit integers: {exc}") from exc
    if sys.byteorder == "big":  # pragma: no cover - keys are defined little-endian
        packed.byteswap()
    view = memoryview(packed).cast("B")
    stride = block_size * 4
    keys: list[BlockKey] = []
    parent_bytes = parent.to_bytes(_KEY_BYTES, "little")
    blake2b = hashlib.blake2b
    for start in range(0, num_blocks * stride, stride):
        hasher = blake2b(parent_bytes, digest_size=_KEY_BYTES)
        hasher.update(view[start : start + stride])
        parent_bytes = hasher.digest()
        keys.append(BlockKey(int.from_bytes(parent_bytes, "little")))
    return keys


def block_keys(
    token_ids: Sequence[int],
    block_size: int,
    *,
    lora_name: str | None = None,
    cache_salt: str | None = None,
) -> list[BlockKey]:
    """Keys of a prompt's full blocks, as the router computes them before a lookup."""
    return chain_keys(root_key(lora_name, cache_salt), token_ids, block_size)

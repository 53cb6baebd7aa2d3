"""Block keys: chaining, extra keys, partial blocks."""

from __future__ import annotations

import pytest

from pdserve.index import block_keys, chain_keys, num_full_blocks, root_key

BLOCK = 4


def test_only_full_blocks_get_keys() -> None:
    tokens = list(range(11))
    assert len(block_keys(tokens, BLOCK)) == 2
    assert block_keys(tokens, BLOCK) == block_keys(tokens[:8], BLOCK)
    assert block_keys(tokens[:3], BLOCK) == []
    assert num_full_blocks(11, BLOCK) == 2


def test_keys_chain_over_the_whole_prefix() -> None:
    a = block_keys([1, 2, 3, 4, 5, 6, 7, 8], BLOCK)
    b = block_keys([9, 2, 3, 4, 5, 6, 7, 8], BLOCK)
    # Same second block, different first block: every key differs.
    assert a[0] != b[0]
    assert a[1] != b[1]
    # A shared prefix gives shared leading keys.
    c = block_keys([1, 2, 3, 4, 0, 0, 0, 0], BLOCK)
    assert c[0] == a[0]
    assert c[1] != a[1]


def test_chain_keys_continues_a_chain() -> None:
    tokens = list(range(100, 116))
    whole = block_keys(tokens, BLOCK)
    head = block_keys(tokens[:8], BLOCK)
    tail = chain_keys(head[-1], tokens[8:], BLOCK)
    assert head + tail == whole


def test_extra_keys_change_every_key() -> None:
    tokens = list(range(8))
    plain = block_keys(tokens, BLOCK)
    lora = block_keys(tokens, BLOCK, lora_name="adapter")
    salted = block_keys(tokens, BLOCK, cache_salt="tenant-a")
    other_salt = block_keys(tokens, BLOCK, cache_salt="tenant-b")
    assert len({tuple(plain), tuple(lora), tuple(salted), tuple(other_salt)}) == 4
    assert not set(plain) & set(lora)
    assert block_keys(tokens, BLOCK, cache_salt="tenant-a") == salted
    # An empty salt is not the same as no salt, and fields do not run into each other.
    assert root_key(None, "") != root_key(None, None)
    assert root_key("ab", "c") != root_key("a", "bc")


def test_keys_are_stable_64_bit_ints() -> None:
    keys = block_keys(list(range(256)), 128)
    assert all(0 <= k < 2**64 for k in keys)
    # Pinned values: keys are shared between processes and versions, so they must never drift.
    assert root_key() == 0xBC0509E270D8D530
    assert keys == [0x7905A6E33ACB3DA2, 0xB527C8F73BF9465E]


def test_bad_token_ids_are_rejected() -> None:
    with pytest.raises(ValueError):
        block_keys([-1, 2, 3, 4], BLOCK)
    with pytest.raises(ValueError):
        block_keys([2**32, 2, 3, 4], BLOCK)
    with pytest.raises(ValueError):
        block_keys([1, 2, 3, 4], 0)

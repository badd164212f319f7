"""The prefix cache on its own: block chains, sharing, the last-token rule and LRU bounds."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from services.text.prefix_cache import PrefixCache

LAYERS, HEADS, DIM = 2, 2, 4


def processed(prompt: list[int]) -> DynamicCache:
    """A cache whose keys and values encode (layer, position, token), so tests can read back
    exactly which prompt position a reused entry came from."""
    cache = DynamicCache()
    for layer in range(LAYERS):
        keys = torch.zeros(1, HEADS, len(prompt), DIM)
        for position, token in enumerate(prompt):
            keys[0, :, position, 0] = layer
            keys[0, :, position, 1] = position
            keys[0, :, position, 2] = token
        cache.update(keys, -keys, layer)
    return cache


def block_bytes(block_tokens: int) -> int:
    return 2 * LAYERS * HEADS * block_tokens * DIM * 4


def test_a_prompt_that_starts_like_a_stored_one_reuses_its_whole_blocks():
    cache = PrefixCache(max_bytes=10**6, block_tokens=4)
    first = list(range(10, 21))  # 11 tokens: two whole blocks
    assert cache.lookup(first).tokens == 0
    cache.store(first, processed(first))
    assert cache.blocks == 2 and cache.bytes == 2 * block_bytes(4)
    continued = first + [99, 98, 97]
    match = cache.lookup(continued)
    assert match.tokens == 8
    keys = match.cache.layers[1].keys
    assert keys.shape == (1, HEADS, 8, DIM)
    assert keys[0, 0, :, 1].tolist() == list(range(8))
    assert keys[0, 0, :, 2].tolist() == first[:8]
    assert keys[0, 0, :, 0].eq(1).all()
    assert torch.equal(match.cache.layers[1].values, -keys)
    assert cache.prompt_tokens == 11 + 14 and cache.cached_tokens == 8
    assert cache.hit_rate == pytest.approx(8 / 25)


def test_the_last_prompt_token_is_always_processed_again():
    cache = PrefixCache(max_bytes=10**6, block_tokens=4)
    prompt = list(range(8))
    cache.store(prompt, processed(prompt))
    assert cache.lookup(prompt).tokens == 4  # not 8: the last token's logits are needed
    assert cache.lookup(prompt + [5]).tokens == 8


def test_a_block_is_reused_only_after_the_same_beginning():
    cache = PrefixCache(max_bytes=10**6, block_tokens=4)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    cache.store(prompt, processed(prompt))
    # Same second block, different first one: nothing matches.
    assert cache.lookup([0, 2, 3, 4, 5, 6, 7, 8, 9]).tokens == 0
    # Diverging inside the second block: only the first one matches.
    assert cache.lookup([1, 2, 3, 4, 5, 6, 0, 8, 9]).tokens == 4


def test_prompts_sharing_a_beginning_share_its_blocks():
    cache = PrefixCache(max_bytes=10**6, block_tokens=4)
    scenario = [7] * 8
    one, two = scenario + [1, 1, 1, 1, 0], scenario + [2, 2, 2, 2, 0]
    cache.store(one, processed(one))
    cache.store(two, processed(two))
    assert cache.blocks == 4  # the two scenario blocks once, one own block each
    assert cache.lookup(two).tokens == 12


def test_least_recently_used_chains_go_first_from_their_end():
    cache = PrefixCache(max_bytes=4 * block_bytes(2), block_tokens=2)
    old, new = [1, 1, 2, 2, 0], [3, 3, 4, 4, 0]
    cache.store(old, processed(old))
    cache.store(new, processed(new))
    assert cache.blocks == 4
    cache.lookup(old)  # old is now the most recent
    third = [5, 5, 0]
    cache.store(third, processed(third))
    assert cache.bytes <= cache.max_bytes and cache.blocks == 4
    # `new` lost its end first: its beginning is still there.
    assert cache.lookup(new).tokens == 2
    assert cache.lookup(old).tokens == 4
    assert cache.lookup(third).tokens == 2


def test_zero_bytes_turns_reuse_off():
    cache = PrefixCache(max_bytes=0, block_tokens=4)
    prompt = list(range(20))
    cache.store(prompt, processed(prompt))
    assert cache.blocks == 0 and cache.lookup(prompt).tokens == 0

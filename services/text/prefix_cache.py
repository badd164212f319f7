"""Prefix reuse: the keys and values of recent prompts, kept in fixed-size blocks of tokens so a
new prompt that starts like an earlier one (the same story continued, two users on the same
public scenario) skips processing the part they share.

A block is identified by its tokens *and everything before them*: its key chains the key of the
block before it with its own token ids, so a block is only ever reused after exactly the same
prefix, and blocks of different prompts that share a beginning are shared. Only whole blocks are
kept; the last prompt token is always processed again because its logits give the first output
token.

The cache is bounded in bytes; least recently used blocks go first. A lookup touches the matched
chain from its last block to its first, so the first blocks of a chain are the most recent and a
chain is cut back from its end, never left without its beginning.
"""

from __future__ import annotations

import array
import collections
import hashlib
from dataclasses import dataclass

import torch
from transformers import DynamicCache

_ROOT = b""


def _block_key(parent: bytes, tokens: list[int]) -> bytes:
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(array.array("q", tokens).tobytes())
    return digest.digest()


@dataclass
class _Block:
    keys: torch.Tensor  # [layers, kv_heads, block_tokens, head_dim]
    values: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() * 2


@dataclass
class PrefixMatch:
    """The cached beginning of a prompt: `tokens` prompt tokens whose keys and values are in
    `cache` (a fresh cache the rest of the prompt is processed into)."""

    tokens: int
    cache: DynamicCache


class PrefixCache:
    """Block-granular, LRU-bounded store of prompt keys and values (see the module docstring)."""

    def __init__(self, max_bytes: int, block_tokens: int = 32) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be at least 1")
        self.max_bytes = max_bytes
        self.block_tokens = block_tokens
        self._blocks: collections.OrderedDict[bytes, _Block] = collections.OrderedDict()
        self.bytes = 0
        # Running totals over every lookup (the hit rate is cached / prompt tokens).
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.lookups = 0
        self.hits = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def blocks(self) -> int:
        return len(self._blocks)

    @property
    def hit_rate(self) -> float:
        """Share of prompt tokens served from the cache so far."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def _chain(self, prompt: list[int], limit: int):
        """(key, start) of every whole block within the first `limit` tokens."""
        parent = _ROOT
        size = self.block_tokens
        for start in range(0, limit - size + 1, size):
            parent = _block_key(parent, prompt[start: start + size])
            yield parent, start

    def lookup(self, prompt: list[int]) -> PrefixMatch:
        """The longest cached beginning of `prompt`, leaving at least its last token to process."""
        self.lookups += 1
        self.prompt_tokens += len(prompt)
        matched: list[tuple[bytes, _Block]] = []
        if self.enabled:
            for key, _ in self._chain(prompt, len(prompt) - 1):
                block = self._blocks.get(key)
                if block is None:
                    break
                matched.append((key, block))
        cache = DynamicCache()
        if not matched:
            return PrefixMatch(0, cache)
        for key, _ in reversed(matched):
            self._blocks.move_to_end(key)
        keys = torch.cat([block.keys for _, block in matched], dim=2)
        values = torch.cat([block.values for _, block in matched], dim=2)
        for layer in range(keys.shape[0]):
            cache.update(keys[layer].unsqueeze(0), values[layer].unsqueeze(0), layer)
        tokens = len(matched) * self.block_tokens
        self.hits += 1
        self.cached_tokens += tokens
        return PrefixMatch(tokens, cache)

    def store(self, prompt: list[int], cache: DynamicCache) -> None:
        """Keep the whole blocks of a processed prompt whose keys and values are in `cache`
        (position i of the cache holds prompt token i)."""
        if not self.enabled:
            return
        chain = list(self._chain(prompt, len(prompt)))
        for key, start in chain:
            if key in self._blocks:
                continue
            span = slice(start, start + self.block_tokens)
            block = _Block(
                keys=torch.stack([layer.keys[0, :, span] for layer in cache.layers]).clone(),
                values=torch.stack([layer.values[0, :, span] for layer in cache.layers]).clone())
            if block.nbytes > self.max_bytes:
                return
            self._blocks[key] = block
            self.bytes += block.nbytes
        # The stored chain is the most recent, its first block last (as in `lookup`).
        for key, _ in reversed(chain):
            if key in self._blocks:
                self._blocks.move_to_end(key)
        self._evict()

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self.bytes -= block.nbytes

    def clear(self) -> None:
        self._blocks.clear()
        self.bytes = 0

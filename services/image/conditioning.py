"""From a prompt to the text encoder's conditioning: weighted tokens, 77-token chunks, embeddings.

CLIP sees 77 positions: a start token, 75 prompt tokens and an end token (then padding). Longer
prompts are cut into chunks of 75 tokens, each encoded on its own and concatenated along the
sequence (AUTOMATIC1111's approach; the UNet's cross-attention takes any length), so nothing is
silently truncated. A chunk prefers to end after a comma near its end, so a tag is not split
across two chunks. Beyond `max_chunks` the remaining words are dropped and reported.

Weights scale each token's embedding; the chunk's mean is then restored, so that emphasis shifts
attention between tokens instead of brightening the whole conditioning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from services.image.prompts import parse

CHUNK_TOKENS = 75
_WORD = re.compile(r"\S+")
# A chunk that would end mid-tag ends after its last comma instead, if that comma is this close.
COMMA_BACKTRACK = 20


@dataclass
class Chunk:
    token_ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


@dataclass
class TokenizedPrompt:
    """A prompt as the model sees it."""

    chunks: list[Chunk]
    dropped_words: list[str]
    token_count: int

    @property
    def is_weighted(self) -> bool:
        return any(abs(w - 1.0) > 1e-9 for chunk in self.chunks for w in chunk.weights)


class PromptTokenizer:
    """Tokenizes prompt-language text for one CLIP tokenizer."""

    def __init__(self, tokenizer, max_chunks: int) -> None:
        self.tokenizer = tokenizer
        self.max_chunks = max_chunks
        self.comma_id = tokenizer.convert_tokens_to_ids(",</w>")

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        # Word by word (CLIP's pre-tokenizer never joins across whitespace, so the tokens are the
        # same as for the whole text), remembering each token's word, so that dropped tokens can
        # be reported as the words the user wrote ("tag119", not CLIP's "tag 1 1 9").
        words: list[str] = []
        weights_of_words: list[float] = []
        for piece in parse(prompt):
            for word in _WORD.findall(piece.text):
                words.append(word)
                weights_of_words.append(piece.weight)
        encoded = self.tokenizer(words, add_special_tokens=False, truncation=False, verbose=False).input_ids \
            if words else []
        ids: list[int] = []
        weights: list[float] = []
        owner: list[int] = []
        for index, (word_ids, weight) in enumerate(zip(encoded, weights_of_words)):
            ids += word_ids
            weights += [weight] * len(word_ids)
            owner += [index] * len(word_ids)
        chunks: list[Chunk] = []
        start = 0
        while start < len(ids):
            end = min(start + CHUNK_TOKENS, len(ids))
            if end < len(ids):
                # Back up to just after the last comma if it is near the end.
                for back in range(end, max(start, end - COMMA_BACKTRACK), -1):
                    if ids[back - 1] == self.comma_id:
                        end = back
                        break
            chunks.append(Chunk(ids[start:end], weights[start:end]))
            start = end
        if not chunks:
            chunks.append(Chunk())
        dropped: list[str] = []
        if len(chunks) > self.max_chunks:
            kept = sum(len(chunk.token_ids) for chunk in chunks[: self.max_chunks])
            first_dropped = owner[kept]
            dropped = [word for word in words[first_dropped:] if word.strip(",")]
            chunks = chunks[: self.max_chunks]
        return TokenizedPrompt(chunks, dropped, sum(len(c.token_ids) for c in chunks))

    def window(self, chunk: Chunk) -> tuple[list[int], list[float]]:
        """The 77 positions the encoder sees for a chunk: start, tokens, end, padding."""
        pad = self.tokenizer.pad_token_id
        ids = [self.tokenizer.bos_token_id, *chunk.token_ids, self.tokenizer.eos_token_id]
        weights = [1.0, *chunk.weights, 1.0]
        ids += [pad] * (CHUNK_TOKENS + 2 - len(ids))
        weights += [1.0] * (CHUNK_TOKENS + 2 - len(weights))
        return ids, weights

    def describe(self, tokenized: TokenizedPrompt) -> list[dict]:
        return [{
            "token_ids": chunk.token_ids,
            "tokens": self.tokenizer.convert_ids_to_tokens(chunk.token_ids),
            "weights": chunk.weights,
            "text": self.tokenizer.decode(chunk.token_ids),
        } for chunk in tokenized.chunks]


# (input_ids [batch, 77]) -> (hidden states [batch, 77, dim], pooled [batch, dim] or None)
EncodeFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class Conditioning:
    """Embeddings of one prompt: hidden states over all chunks, and (SDXL) the pooled vector."""

    hidden: torch.Tensor  # [1, 77 * chunks, dim]
    pooled: torch.Tensor | None  # [1, pooled_dim] (SDXL) or None

    @property
    def length(self) -> int:
        return self.hidden.shape[1]


def encode(tokenizers: Sequence[PromptTokenizer], encoders: Sequence[EncodeFn], prompts: Sequence[TokenizedPrompt],
           chunks: int) -> Conditioning:
    """Encode one prompt (tokenized once per tokenizer) into `chunks` chunks' worth of embeddings.

    Missing chunks (the shorter of prompt and negative prompt) are encoded empty, as the longer
    one needs a partner of the same length for classifier-free guidance. With several encoders
    (SDXL), their hidden states are concatenated along the feature axis and the pooled vector
    comes from the last encoder's first chunk.
    """
    per_encoder: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    for tokenizer, encoder, tokenized in zip(tokenizers, encoders, prompts, strict=True):
        windows = [tokenizer.window(c) for c in tokenized.chunks]
        windows += [tokenizer.window(Chunk()) for _ in range(chunks - len(windows))]
        ids = torch.tensor([w[0] for w in windows], dtype=torch.long)
        hidden, pooled_all = encoder(ids)
        if tokenized.is_weighted:
            weights = torch.tensor([w[1] for w in windows], dtype=hidden.dtype, device=hidden.device)
            original_mean = hidden.mean(dim=(1, 2), keepdim=True)
            hidden = hidden * weights.unsqueeze(-1)
            hidden = hidden * (original_mean / hidden.mean(dim=(1, 2), keepdim=True))
        per_encoder.append(hidden.reshape(1, -1, hidden.shape[-1]))
        if pooled_all is not None:
            pooled = pooled_all[:1]
    return Conditioning(torch.cat(per_encoder, dim=-1), pooled)

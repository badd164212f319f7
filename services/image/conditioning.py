"""From a prompt to the text encoder's conditioning: weighted tokens, 77-token chunks, embeddings.

CLIP sees 77 positions: a start token, 75 prompt tokens and an end token (then padding). Longer
prompts are cut into chunks of 75 tokens, each encoded on its own and concatenated along the
sequence (AUTOMATIC1111's approach; the UNet's cross-attention takes any length), so nothing is
silently truncated. Chunks are cut as AUTOMATIC1111 cuts them: when a chunk is full and the next
token is not a comma, the words after the chunk's last comma move to the next chunk if that
comma is among the chunk's last 20 tokens, so a tag is not split across two chunks; a comma that
arrives at a full chunk starts the next one. AUTOMATIC1111's BREAK ends a chunk early. Beyond
`max_chunks` the remaining words are dropped and reported.

Weights scale each token's embedding; the chunk's mean is then restored, so that emphasis shifts
attention between tokens instead of brightening the whole conditioning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from services.image.prompts import ChunkBreak, Dialect, Parsed, parse
from services.image.schedule import Stage, schedule

CHUNK_TOKENS = 75
_WORD = re.compile(r"\S+")
# A full chunk gives its words after its last comma to the next chunk, if that comma is this close
# to its end (AUTOMATIC1111's default "comma padding backtrack").
COMMA_BACKTRACK = 20
# The mean is restored only where it is this large a fraction of the mean magnitude: dividing by
# a mean near zero (an encoder whose states are centred) would scale the chunk arbitrarily, even
# flip its sign. Real CLIP encoders' means are well above it, so for them nothing changes.
MEAN_FLOOR = 0.02


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
    pieces: list[Parsed] = field(default_factory=list)  # the parse the tokens came from

    @property
    def is_weighted(self) -> bool:
        return any(abs(w - 1.0) > 1e-9 for chunk in self.chunks for w in chunk.weights)


class PromptTokenizer:
    """Tokenizes prompt-language text for one CLIP tokenizer."""

    def __init__(self, tokenizer, max_chunks: int) -> None:
        self.tokenizer = tokenizer
        self.max_chunks = max_chunks
        self.comma_id = tokenizer.convert_tokens_to_ids(",</w>")

    def tokenize(self, prompt: str, dialect: Dialect = Dialect.NOVELAI) -> TokenizedPrompt:
        # Word by word (CLIP's pre-tokenizer never joins across whitespace, so the tokens are the
        # same as for the whole text), remembering each token's word, so that dropped tokens can
        # be reported as the words the user wrote ("tag119", not CLIP's "tag 1 1 9").
        pieces = parse(prompt, dialect)
        words: list[str] = []
        weights_of_words: list[float] = []
        events: list[int | None] = []  # word indices in order; None where a chunk breaks
        for item in pieces:
            if isinstance(item, ChunkBreak):
                events.append(None)
                continue
            for word in _WORD.findall(item.text):
                events.append(len(words))
                words.append(word)
                weights_of_words.append(item.weight)
        encoded = self.tokenizer(words, add_special_tokens=False, truncation=False, verbose=False).input_ids \
            if words else []
        owner: list[int] = []  # each token's word, in prompt order
        chunks: list[Chunk] = []
        current = Chunk()
        last_comma = -1  # position of the current chunk's last comma

        def close() -> None:
            nonlocal current, last_comma
            chunks.append(current)
            current, last_comma = Chunk(), -1

        for event in events:
            if event is None:
                close()
                continue
            for token in encoded[event]:
                if token == self.comma_id:
                    last_comma = len(current.token_ids)
                elif (len(current.token_ids) == CHUNK_TOKENS and last_comma >= 0
                      and CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK):
                    cut = last_comma + 1
                    moved = Chunk(current.token_ids[cut:], current.weights[cut:])
                    del current.token_ids[cut:], current.weights[cut:]
                    close()
                    current = moved
                if len(current.token_ids) == CHUNK_TOKENS:
                    close()
                current.token_ids.append(token)
                current.weights.append(weights_of_words[event])
                owner.append(event)
        if current.token_ids or not chunks:
            close()
        dropped: list[str] = []
        if len(chunks) > self.max_chunks:
            kept = sum(len(chunk.token_ids) for chunk in chunks[: self.max_chunks])
            if kept < len(owner):
                dropped = [word for word in words[owner[kept]:] if word.strip(",")]
            chunks = chunks[: self.max_chunks]
        return TokenizedPrompt(chunks, dropped, sum(len(c.token_ids) for c in chunks), pieces)

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
            hidden = emphasize(hidden, weights)
        per_encoder.append(hidden.reshape(1, -1, hidden.shape[-1]))
        if pooled_all is not None:
            pooled = pooled_all[:1]
    return Conditioning(torch.cat(per_encoder, dim=-1), pooled)


def emphasize(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each position's states by its weight, then restore each chunk's mean where it means something.

    `hidden` is [chunks, positions, features], `weights` [chunks, positions]. The restoring factor
    (old mean / new mean) is used only where both means are clearly away from zero, relative to
    the states' mean magnitude, and have the same sign; elsewhere the weighted states stand as
    they are.
    """
    original_mean = hidden.mean(dim=(1, 2), keepdim=True)
    magnitude = hidden.abs().mean(dim=(1, 2), keepdim=True)
    weighted = hidden * weights.unsqueeze(-1)
    new_mean = weighted.mean(dim=(1, 2), keepdim=True)
    floor = MEAN_FLOOR * magnitude
    restorable = (original_mean.abs() > floor) & (new_mean.abs() > floor) & (original_mean * new_mean > 0)
    factor = torch.where(restorable, original_mean / torch.where(restorable, new_mean, 1), 1)
    return weighted * factor


@dataclass
class StagedPrompt:
    """A prompt's prompt-editing stages (one without editing), each tokenized once per tokenizer."""

    stages: list[Stage]
    tokenized: list[list[TokenizedPrompt]]  # [stage][tokenizer]

    @property
    def chunks(self) -> int:
        return max(len(t.chunks) for per_stage in self.tokenized for t in per_stage)


def stage_prompt(tokenizers: Sequence[PromptTokenizer], prompt: str, dialect: Dialect, steps: int) -> StagedPrompt:
    """Resolve prompt editing (AUTOMATIC1111's dialect only) and tokenize every stage."""
    stages = schedule(prompt, steps) if dialect == Dialect.A1111 else [Stage(steps, prompt)]
    tokenized: dict[str, list[TokenizedPrompt]] = {}  # alternations repeat texts
    for stage in stages:
        if stage.text not in tokenized:
            tokenized[stage.text] = [t.tokenize(stage.text, dialect) for t in tokenizers]
    return StagedPrompt(stages, [tokenized[stage.text] for stage in stages])

"""What a generation streams back, as domain values (wire.py turns them into protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.image.conditioning import PromptTokenizer, TokenizedPrompt


@dataclass
class PromptReport:
    token_count: int
    chunks: list[dict]
    dropped_words: list[str]
    effective_prompt: str

    @classmethod
    def build(cls, tokenizer: PromptTokenizer, tokenized: TokenizedPrompt, effective: str) -> PromptReport:
        return cls(tokenized.token_count, tokenizer.describe(tokenized), tokenized.dropped_words, effective)


@dataclass
class Accepted:
    seeds: list[int]
    width: int
    height: int
    steps: int
    sampler: str
    model: str
    prompt: PromptReport
    negative_prompt: PromptReport
    queue_position: int = 0


@dataclass
class Progress:
    step: int
    total_steps: int
    previews: list[bytes] = field(default_factory=list)


@dataclass
class GeneratedImage:
    index: int
    seed: int
    png: bytes
    parameters: str
    width: int
    height: int


@dataclass
class Finished:
    queue_seconds: float
    generation_seconds: float


Event = Accepted | Progress | GeneratedImage | Finished

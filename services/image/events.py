"""What a generation streams back, as domain values (wire.py turns them into protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.image.conditioning import PromptTokenizer, StagedPrompt, TokenizedPrompt
from services.image.prompts import ChunkBreak, Dialect


def _segments(tokenized: TokenizedPrompt) -> list[dict]:
    return [{"text": "", "weight": 0.0, "chunk_break": True} if isinstance(item, ChunkBreak)
            else {"text": item.text, "weight": item.weight, "chunk_break": False} for item in tokenized.pieces]


@dataclass
class StageReport:
    """One prompt-editing stage: its text, parse and chunks, used up to `until_step`."""

    until_step: int
    text: str
    token_count: int
    segments: list[dict]
    chunks: list[dict]


@dataclass
class PromptReport:
    """How a prompt is read: its first stage's tokens and chunks, and every stage of its edits."""

    token_count: int
    chunks: list[dict]
    dropped_words: list[str]
    effective_prompt: str
    dialect: Dialect = Dialect.NOVELAI
    segments: list[dict] = field(default_factory=list)
    stages: list[StageReport] = field(default_factory=list)

    @classmethod
    def build(cls, tokenizer: PromptTokenizer, staged: StagedPrompt, effective: str, dialect: Dialect,
              tokenizer_index: int = 0) -> PromptReport:
        stages = []
        dropped: list[str] = []
        for stage, per_tokenizer in zip(staged.stages, staged.tokenized):
            tokenized = per_tokenizer[tokenizer_index]
            stages.append(StageReport(stage.until_step, stage.text, tokenized.token_count, _segments(tokenized),
                                      tokenizer.describe(tokenized)))
            dropped += [word for word in tokenized.dropped_words if word not in dropped]
        first = stages[0]
        return cls(first.token_count, first.chunks, dropped, effective, dialect, first.segments, stages)


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

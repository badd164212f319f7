"""What a generation streams back, as domain values that convert themselves to protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field

from fabula.image.v1 import image_pb2
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

    def to_pb(self) -> image_pb2.PromptReport:
        return image_pb2.PromptReport(
            token_count=self.token_count, dropped_words=self.dropped_words, effective_prompt=self.effective_prompt,
            chunks=[image_pb2.PromptChunk(token_ids=c["token_ids"], tokens=c["tokens"], weights=c["weights"],
                                          text=c["text"]) for c in self.chunks])


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

    def to_pb(self) -> image_pb2.GenerateResponse:
        return image_pb2.GenerateResponse(accepted=image_pb2.Accepted(
            seeds=self.seeds, width=self.width, height=self.height, steps=self.steps, sampler=self.sampler,
            model=self.model, prompt=self.prompt.to_pb(), negative_prompt=self.negative_prompt.to_pb(),
            queue_position=self.queue_position))


@dataclass
class Progress:
    step: int
    total_steps: int
    previews: list[bytes] = field(default_factory=list)

    def to_pb(self) -> image_pb2.GenerateResponse:
        return image_pb2.GenerateResponse(progress=image_pb2.Progress(
            step=self.step, total_steps=self.total_steps, previews=self.previews))


@dataclass
class GeneratedImage:
    index: int
    seed: int
    png: bytes
    parameters: str
    width: int
    height: int

    def to_pb(self) -> image_pb2.GenerateResponse:
        return image_pb2.GenerateResponse(image=image_pb2.Image(
            index=self.index, seed=self.seed, png=self.png, parameters=self.parameters, width=self.width,
            height=self.height))


@dataclass
class Finished:
    queue_seconds: float
    generation_seconds: float

    def to_pb(self) -> image_pb2.GenerateResponse:
        return image_pb2.GenerateResponse(finished=image_pb2.Finished(
            queue_seconds=self.queue_seconds, generation_seconds=self.generation_seconds))


Event = Accepted | Progress | GeneratedImage | Finished

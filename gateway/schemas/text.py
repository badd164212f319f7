"""The JSON bodies of /ai/generate, /ai/generate-stream, /ai/tokenize, /ai/models and /ai/presets,
and their conversion to and from the text service's protobuf.

The text service validates every value (ranges, vocabulary, regexes). The request models check
what protobuf cannot carry (signs, integer widths, lone surrogates) and the sampling and bias
ranges, read from the table the service validates against (`fabula_wire.sampling`), so that the
OpenAPI document states them; limits of the deployment or the model (max_new_tokens, the
vocabulary, the model names) are added to the document at run time (`gateway.contract`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fabula.text.v1 import text_pb2
from fabula_wire.sampling import (
    BIAS_RANGE,
    MAX_CFG_UC_CHARS,
    MAX_DRY_BREAKER_CHARS,
    MAX_DRY_BREAKERS,
    MAX_LOGIT_BIASES,
    MAX_SEED,
    MAX_STRING_CHARS,
    MAX_STRINGS,
    MAX_TOP_PROBABILITIES,
    SAMPLING_RANGES,
)
from fabula_wire.story_context import (
    MAX_AFFIX_CHARS,
    MAX_AUTHORS_NOTE_DEPTH,
    MAX_CATEGORIES,
    MAX_KEY_CHARS,
    MAX_KEYS_PER_ENTRY,
    MAX_LOREBOOK_ENTRIES,
    MAX_PART_CHARS,
    MAX_POSITION,
)
from gateway.schemas.common import UINT32_MAX, RequestBody, Text, Uint32, ranged

# The service names fields of its GenerationSpec ("spec.sampling.top_p"); the HTTP body is that
# spec itself, so the field the client sees is "sampling.top_p" (errors.py applies this).
FIELD_PREFIXES = ("spec.",)

SamplerKey = Literal["temperature", "top_k", "top_p", "top_a", "typical_p", "tail_free", "min_p",
                     "repetition_penalty", "phrase_repetition_penalty", "dry", "xtc", "unified", "mirostat"]
PhraseLevel = Literal["off", "very_light", "light", "medium", "aggressive", "very_aggressive"]
# The numeric sampling fields, carried to the service as they are (it checks their ranges).
NUMERIC_SAMPLING = ("temperature", "top_k", "top_p", "top_a", "typical_p", "tail_free", "min_p",
                    "repetition_penalty", "repetition_penalty_range", "repetition_penalty_slope",
                    "frequency_penalty", "presence_penalty", "mirostat", "mirostat_tau", "mirostat_eta",
                    "cfg_scale", "unified_linear", "unified_quad", "unified_conf", "dry_multiplier", "dry_base",
                    "dry_allowed_length", "dry_penalty_last_n", "xtc_threshold", "xtc_probability")
# The text service's accepted values of each sampling field, stated in the OpenAPI document.
Sampled = {name: ranged(allowed) for name, allowed in SAMPLING_RANGES.items()}
# A stop sequence, banned string or biased phrase, and a list of them.
Phrase = Annotated[Text, Field(min_length=1, max_length=MAX_STRING_CHARS)]
Phrases = Annotated[list[Phrase], Field(max_length=MAX_STRINGS)]
# DRY's sequence breakers.
Breakers = Annotated[list[Annotated[Text, Field(min_length=1, max_length=MAX_DRY_BREAKER_CHARS)]],
                     Field(max_length=MAX_DRY_BREAKERS)]
GuidanceContext = Annotated[Text, Field(max_length=MAX_CFG_UC_CHARS)]
# Below 2**63 (the largest seed + 1), as gateway.schemas.common states bounds past 2**53.
Seed = Annotated[int, Field(ge=0, lt=MAX_SEED + 1)]
FINISH_REASONS = {
    text_pb2.FINISH_REASON_LENGTH: "length",
    text_pb2.FINISH_REASON_STOP_SEQUENCE: "stop_sequence",
    text_pb2.FINISH_REASON_END_OF_TEXT: "end_of_text",
    text_pb2.FINISH_REASON_CANCELLED: "cancelled",
}


# --- request bodies ----------------------------------------------------------------------------


class SamplerStep(RequestBody):
    sampler: SamplerKey
    enabled: bool = True


class Sampling(RequestBody):
    """Unset fields take the preset's value (see GET /ai/presets)."""

    temperature: Sampled["temperature"] | None = Field(None, description="0 = greedy; neutral 1")
    top_k: Sampled["top_k"] | None = Field(None, description="0 = off")
    top_p: Sampled["top_p"] | None = Field(None, description="(0, 1]; 1 = off")
    top_a: Sampled["top_a"] | None = Field(None, description="[0, 1]; 0 = off")
    typical_p: Sampled["typical_p"] | None = Field(None, description="(0, 1]; 1 = off")
    tail_free: Sampled["tail_free"] | None = Field(None, description="(0, 1]; 1 = off")
    min_p: Sampled["min_p"] | None = Field(None, description="[0, 1]; 0 = off")
    repetition_penalty: Sampled["repetition_penalty"] | None = Field(None, description="(0, 10]; 1 = off")
    repetition_penalty_range: Sampled["repetition_penalty_range"] | None = Field(
        None, description="recent tokens looked at; 0 = all")
    repetition_penalty_slope: Sampled["repetition_penalty_slope"] | None = Field(
        None, description="[0, 10]; 0 = flat")
    frequency_penalty: Sampled["frequency_penalty"] | None = Field(None, description="[-2, 2]")
    presence_penalty: Sampled["presence_penalty"] | None = Field(None, description="[-2, 2]")
    repetition_penalty_whitelist: list[Uint32] = Field(default_factory=list, description="token ids spared")
    mirostat: Sampled["mirostat"] | None = Field(None, description="0 = off, 1 or 2")
    mirostat_tau: Sampled["mirostat_tau"] | None = Field(None, description="[0, 100] bits; default 5")
    mirostat_eta: Sampled["mirostat_eta"] | None = Field(None, description="[0, 1]; default 0.1")
    cfg_scale: Sampled["cfg_scale"] | None = Field(None, description="[0, 100]; 1 = off")
    cfg_uc: GuidanceContext | None = Field(None, description="negative context for guidance; empty = the start token")
    phrase_repetition_penalty: PhraseLevel | None = Field(None, description="NovelAI's levels; off by default")
    unified_linear: Sampled["unified_linear"] | None = Field(None, description="[0, 10]; 1 = neutral")
    unified_quad: Sampled["unified_quad"] | None = Field(None, description="[0, 10]; 0 = off")
    unified_conf: Sampled["unified_conf"] | None = Field(None, description="[-10, 10]; 0 = off")
    dry_multiplier: Sampled["dry_multiplier"] | None = Field(None, description="[0, 100]; 0 = off")
    dry_base: Sampled["dry_base"] | None = Field(None, description="(1, 10]; default 1.75")
    dry_allowed_length: Sampled["dry_allowed_length"] | None = Field(None, description="[1, 1000]; default 2")
    dry_penalty_last_n: Sampled["dry_penalty_last_n"] | None = Field(None, description="recent tokens searched; 0 = all")
    dry_sequence_breakers: Breakers | None = Field(None, description="strings; unset = the preset's")
    xtc_threshold: Sampled["xtc_threshold"] | None = Field(None, description="[0, 1]; above 0.5 = off; default 0.1")
    xtc_probability: Sampled["xtc_probability"] | None = Field(None, description="[0, 1]; 0 = off")
    sampler_order: list[SamplerStep] = Field(default_factory=list,
                                             description="every classic warper exactly once, the newer steps "
                                                         "optionally; empty = default order")
    sampler_convention: Literal["fabula", "koboldcpp"] | None = Field(
        None, description="whose definition of the slope, tail-free, top_k and typical_p to follow "
                          "(fabula = KoboldAI/transformers, koboldcpp = KoboldCpp); unset = the preset's")

    def to_pb(self) -> text_pb2.SamplingParameters:
        message = text_pb2.SamplingParameters(
            repetition_penalty_whitelist=self.repetition_penalty_whitelist,
            sampler_order=[text_pb2.SamplerStep(sampler=text_pb2.Sampler.Value(f"SAMPLER_{step.sampler.upper()}"),
                                                enabled=step.enabled) for step in self.sampler_order])
        if self.sampler_convention is not None:
            message.sampler_convention = text_pb2.SamplerConvention.Value(
                f"SAMPLER_CONVENTION_{self.sampler_convention.upper()}")
        if self.phrase_repetition_penalty is not None:
            message.phrase_repetition_penalty = text_pb2.PhraseRepetitionPenalty.Value(
                f"PHRASE_REPETITION_PENALTY_{self.phrase_repetition_penalty.upper()}")
        if self.cfg_uc is not None:
            message.cfg_uc = self.cfg_uc
        if self.dry_sequence_breakers is not None:
            message.dry_sequence_breakers.SetInParent()  # an empty list is set too: no breakers
            message.dry_sequence_breakers.breakers.extend(self.dry_sequence_breakers)
        for name in NUMERIC_SAMPLING:
            value = getattr(self, name)
            if value is not None:
                setattr(message, name, value)
        return message


class LogitBias(RequestBody):
    token_id: Uint32 = Field(description="below the model's vocabulary size (GET /ai/models)")
    bias: ranged(BIAS_RANGE)


class PhraseBias(RequestBody):
    phrase: Phrase
    bias: ranged(BIAS_RANGE)


Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
# The story context's limits (the text service checks the same, `fabula_wire.story_context`).
Position = Annotated[int, Field(ge=-MAX_POSITION, le=MAX_POSITION)]
Affix = Annotated[Text, Field(max_length=MAX_AFFIX_CHARS)]
PartText = Annotated[Text, Field(max_length=MAX_PART_CHARS)]
Key = Annotated[Text, Field(min_length=1, max_length=MAX_KEY_CHARS)]
TrimDirectionName = Literal["top", "bottom", "none"]
UnitName = Literal["newline", "sentence", "token"]


class ContextConfig(RequestBody):
    """How one part of a story context is budgeted, trimmed and placed; unset fields take the
    part's default (docs/text.md, "Context building")."""

    prefix: Affix | None = None
    suffix: Affix | None = None
    token_budget: Uint32 | None = Field(None, description="most tokens the part may occupy; 0 = no limit of its own")
    reserved_tokens: Uint32 | None = Field(None, description="set aside before lower priorities are placed")
    budget_priority: Position | None = Field(None, description="higher is placed (and trimmed) first")
    trim_direction: TrimDirectionName | None = None
    maximum_trim_type: UnitName | None = Field(None, description="the finest unit trimming may cut at")
    insertion_type: UnitName | None = Field(None, description="the unit insertion_position counts in")
    insertion_position: Position | None = Field(None, description=">= 0 from the top, < 0 from the bottom "
                                                                  "(-1 = the end)")

    def to_pb(self) -> text_pb2.ContextConfig:
        message = text_pb2.ContextConfig()
        for name in ("prefix", "suffix", "token_budget", "reserved_tokens", "budget_priority", "insertion_position"):
            value = getattr(self, name)
            if value is not None:
                setattr(message, name, value)
        if self.trim_direction is not None:
            message.trim_direction = text_pb2.TrimDirection.Value(f"TRIM_DIRECTION_{self.trim_direction.upper()}")
        if self.maximum_trim_type is not None:
            message.maximum_trim_type = text_pb2.TrimType.Value(f"TRIM_TYPE_{self.maximum_trim_type.upper()}")
        if self.insertion_type is not None:
            message.insertion_type = text_pb2.InsertionType.Value(f"INSERTION_TYPE_{self.insertion_type.upper()}")
        return message


class LorebookEntry(RequestBody):
    id: Text = ""
    name: Text = ""
    text: PartText
    keys: list[Key] = Field(default_factory=list, max_length=MAX_KEYS_PER_ENTRY,
                            description="needed (or the category's default keys) unless always_on or disabled; "
                                        "with regex_keys, regular expressions")
    regex_keys: bool = False
    case_sensitive: bool = False
    scan_depth_chars: Uint32 = 0
    always_on: bool = False
    insertion_order: Int32 = Field(0, description="older field, used only without context_config")
    insertion_position: Int32 = Field(0, description="older field, used only without context_config")
    token_budget: Uint32 = Field(0, description="older field, used only without context_config")
    disabled: bool = False
    key_relative: bool = False
    cascading_activation: bool = False
    category: Text = Field("", description="a lorebook_categories id")
    context_config: ContextConfig | None = None

    def to_pb(self) -> text_pb2.LorebookEntry:
        message = text_pb2.LorebookEntry(**self.model_dump(exclude={"context_config"}))
        if self.context_config is not None:
            message.context_config.CopyFrom(self.context_config.to_pb())
        return message


class CategoryDefaults(LorebookEntry):
    """The template a category's entries take unset settings from."""

    text: PartText = ""


class LorebookCategory(RequestBody):
    id: Text = Field(min_length=1)
    name: Text = ""
    enabled: bool = True
    create_subcontext: bool = False
    subcontext_config: ContextConfig | None = None
    use_category_defaults: bool = False
    category_defaults: CategoryDefaults | None = None

    def to_pb(self) -> text_pb2.LorebookCategory:
        message = text_pb2.LorebookCategory(id=self.id, name=self.name, enabled=self.enabled,
                                            create_subcontext=self.create_subcontext,
                                            use_category_defaults=self.use_category_defaults)
        if self.subcontext_config is not None:
            message.subcontext_config.CopyFrom(self.subcontext_config.to_pb())
        if self.category_defaults is not None:
            message.category_defaults.CopyFrom(self.category_defaults.to_pb())
        return message


class StoryContext(RequestBody):
    story: Text
    memory: PartText = ""
    authors_note: PartText = ""
    authors_note_depth: Annotated[int, Field(ge=0, le=MAX_AUTHORS_NOTE_DEPTH)] | None = Field(
        None, description="older field: lines above the end; default 3")
    lorebook: list[LorebookEntry] = Field(default_factory=list, max_length=MAX_LOREBOOK_ENTRIES)
    max_context_tokens: Uint32 = 0
    memory_config: ContextConfig | None = None
    authors_note_config: ContextConfig | None = None
    story_config: ContextConfig | None = None
    lorebook_categories: list[LorebookCategory] = Field(default_factory=list, max_length=MAX_CATEGORIES)

    def to_pb(self) -> text_pb2.StoryContext:
        message = text_pb2.StoryContext(story=self.story, memory=self.memory, authors_note=self.authors_note,
                                        lorebook=[entry.to_pb() for entry in self.lorebook],
                                        max_context_tokens=self.max_context_tokens,
                                        lorebook_categories=[category.to_pb() for category in self.lorebook_categories])
        if self.authors_note_depth is not None:
            message.authors_note_depth = self.authors_note_depth
        for name in ("memory_config", "authors_note_config", "story_config"):
            config = getattr(self, name)
            if config is not None:
                getattr(message, name).CopyFrom(config.to_pb())
        return message


class GenerateBody(RequestBody):
    """A ready `prompt`, or a story `context` to assemble (not both)."""

    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra={"not": {
        "required": ["prompt", "context"],
        "properties": {"prompt": {"type": "string"}, "context": {"type": "object"}}}})

    model: Text = Field("", description="from GET /ai/models; empty = the default")
    prompt: Text | None = None
    context: StoryContext | None = None
    preset: Text = Field("", description="from GET /ai/presets; empty = the service's default")
    sampling: Sampling | None = None
    max_new_tokens: Annotated[int, Field(ge=1, le=UINT32_MAX)] | None = Field(
        None, description="default 40; at most the text service's max_new_tokens")
    min_new_tokens: Uint32 = 0
    stop_sequences: Phrases = Field(default_factory=list)
    banned_strings: Phrases = Field(default_factory=list)
    logit_bias: list[LogitBias] = Field(default_factory=list, max_length=MAX_LOGIT_BIASES)
    phrase_bias: list[PhraseBias] = Field(default_factory=list, max_length=MAX_STRINGS)
    seed: Seed | None = None
    top_probabilities: int = Field(0, ge=0, le=MAX_TOP_PROBABILITIES,
                                   description="alternatives reported per generated token, before and after the "
                                               "samplers (0: none)")

    @model_validator(mode="after")
    def _one_input(self) -> GenerateBody:
        if self.prompt is not None and self.context is not None:
            raise ValueError("send either prompt or context, not both")
        return self

    def to_generate_pb(self) -> text_pb2.GenerateRequest:
        return text_pb2.GenerateRequest(spec=self.to_pb())

    def to_stream_pb(self) -> text_pb2.GenerateStreamRequest:
        return text_pb2.GenerateStreamRequest(spec=self.to_pb())

    def to_pb(self) -> text_pb2.GenerationSpec:
        spec = text_pb2.GenerationSpec(
            model=self.model, preset=self.preset, min_new_tokens=self.min_new_tokens,
            top_probabilities=self.top_probabilities,
            stop_sequences=self.stop_sequences, banned_strings=self.banned_strings,
            logit_bias=[text_pb2.LogitBias(token_id=b.token_id, bias=b.bias) for b in self.logit_bias],
            phrase_bias=[text_pb2.PhraseBias(phrase=b.phrase, bias=b.bias) for b in self.phrase_bias])
        if self.context is not None:
            spec.context.CopyFrom(self.context.to_pb())
        else:
            spec.prompt = self.prompt or ""
        if self.sampling is not None:
            spec.sampling.CopyFrom(self.sampling.to_pb())
        if self.max_new_tokens is not None:
            spec.max_new_tokens = self.max_new_tokens
        if self.seed is not None:
            spec.seed = self.seed
        return spec


class TokenizeBody(RequestBody):
    model: Text = ""
    text: Text

    def to_pb(self) -> text_pb2.TokenizeRequest:
        return text_pb2.TokenizeRequest(model=self.model, text=self.text)


# --- responses ---------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0


def _logprob(value: float) -> float | None:
    """JSON has no -infinity: a token that could not be drawn has logprob null."""
    return value if math.isfinite(value) else None


class TokenAlternative(BaseModel):
    token_id: int
    text: str
    logprob: float | None

    @classmethod
    def from_pb(cls, message: text_pb2.TokenAlternative) -> TokenAlternative:
        return cls(token_id=message.token_id, text=message.text, logprob=_logprob(message.logprob))


class TokenProbabilities(BaseModel):
    token_id: int
    logprob_before: float | None
    logprob_after: float | None
    before: list[TokenAlternative]
    after: list[TokenAlternative]

    @classmethod
    def from_pb(cls, message: text_pb2.TokenProbabilities) -> TokenProbabilities:
        return cls(token_id=message.token_id, logprob_before=_logprob(message.logprob_before),
                   logprob_after=_logprob(message.logprob_after),
                   before=[TokenAlternative.from_pb(a) for a in message.before],
                   after=[TokenAlternative.from_pb(a) for a in message.after])


class GenerationStats(BaseModel):
    finish_reason: Literal["length", "stop_sequence", "end_of_text", "cancelled"]
    usage: Usage
    seed: int
    model: str
    stop_sequence: str = ""
    time_to_first_token_ms: float
    total_ms: float
    queue_ms: float
    tokens_per_second: float

    @classmethod
    def from_pb(cls, stats: text_pb2.GenerationStats) -> GenerationStats:
        return cls(finish_reason=FINISH_REASONS.get(stats.finish_reason, "cancelled"),
                   usage=Usage(prompt_tokens=stats.prompt_tokens, completion_tokens=stats.completion_tokens,
                               cached_prompt_tokens=stats.cached_prompt_tokens),
                   seed=stats.seed, model=stats.model, stop_sequence=stats.stop_sequence,
                   time_to_first_token_ms=stats.time_to_first_token_ms, total_ms=stats.total_ms,
                   queue_ms=stats.queue_ms, tokens_per_second=stats.tokens_per_second)


class ContextReportEntry(BaseModel):
    source: str
    included: bool
    reason: str
    tokens: int
    trimmed_tokens: int


class ContextReport(BaseModel):
    entries: list[ContextReportEntry]
    prompt_tokens: int
    budget_tokens: int
    prompt: str

    @classmethod
    def from_pb(cls, report: text_pb2.ContextReport) -> ContextReport:
        return cls(entries=[ContextReportEntry(source=e.source, included=e.included, reason=e.reason,
                                               tokens=e.tokens, trimmed_tokens=e.trimmed_tokens)
                            for e in report.entries],
                   prompt_tokens=report.prompt_tokens, budget_tokens=report.budget_tokens, prompt=report.prompt)


class GenerateResult(BaseModel):
    text: str
    token_ids: list[int]
    stats: GenerationStats
    context_report: ContextReport | None = None
    probabilities: list[TokenProbabilities] = Field(default_factory=list,
                                                    description="with top_probabilities: one per token")

    @classmethod
    def from_pb(cls, reply: text_pb2.GenerateResponse) -> GenerateResult:
        report = ContextReport.from_pb(reply.context_report) if reply.HasField("context_report") else None
        return cls(text=reply.text, token_ids=list(reply.token_ids), stats=GenerationStats.from_pb(reply.stats),
                   context_report=report,
                   probabilities=[TokenProbabilities.from_pb(p) for p in reply.probabilities])


class TokenizeResult(BaseModel):
    token_ids: list[int]
    token_texts: list[str]

    @classmethod
    def from_pb(cls, reply: text_pb2.TokenizeResponse) -> TokenizeResult:
        return cls(token_ids=list(reply.token_ids), token_texts=list(reply.token_texts))


class ModelInfo(BaseModel):
    name: str
    context_window: int
    vocab_size: int
    dtype: str
    device: str
    architecture: str
    is_default: bool

    @classmethod
    def from_pb(cls, model: text_pb2.ModelInfo) -> ModelInfo:
        return cls(name=model.name, context_window=model.context_window, vocab_size=model.vocab_size,
                   dtype=model.dtype, device=model.device, architecture=model.architecture,
                   is_default=model.is_default)


class PresetInfo(BaseModel):
    name: str
    description: str
    sampling: dict[str, Any]

    @classmethod
    def from_pb(cls, preset: text_pb2.Preset) -> PresetInfo:
        return cls(name=preset.name, description=preset.description,
                   sampling=MessageToDict(preset.sampling, preserving_proto_field_name=True))


def stream_event_from_pb(message: text_pb2.GenerateStreamResponse) -> tuple[str, Any]:
    """A message of GenerateStream as an SSE event: `context`, `piece` or `final`, and its data."""
    kind = message.WhichOneof("event")
    if kind == "piece":
        data: dict[str, Any] = {"text": message.piece.text, "token_ids": list(message.piece.token_ids)}
        if message.piece.probabilities:
            data["probabilities"] = [TokenProbabilities.from_pb(p).model_dump() for p in message.piece.probabilities]
        return "piece", data
    if kind == "context_report":
        return "context", ContextReport.from_pb(message.context_report).model_dump()
    return "final", GenerationStats.from_pb(message.final).model_dump()

"""The OpenAI-compatible bodies (/v1/models, /v1/completions, /v1/chat/completions) and their
translation onto the text service's GenerationSpec, plus OpenAI's error shape.

Beyond OpenAI's own fields, the extra samplers are accepted the way vLLM and llama.cpp's server
accept them, as more body fields: `top_k`, `min_p`, `top_a`, `typical_p` (llama.cpp: also
`typical`), `tfs` / `tfs_z` / `tail_free`, `repetition_penalty` (llama.cpp: `repeat_penalty`),
`repetition_penalty_range` (llama.cpp: `repeat_last_n`, where -1 means the whole context),
`repetition_penalty_slope`, `sampler_order` / `samplers` (names), `sampler_convention`,
`mirostat` / `mirostat_tau` / `mirostat_eta`, `dry_multiplier` / `dry_base` / `dry_allowed_length` /
`dry_penalty_last_n` (llama.cpp: -1 the whole context, 0 off) / `dry_sequence_breakers`,
`xtc_probability` / `xtc_threshold`, `min_tokens` (vLLM) and Fabula's `preset`. With mirostat on,
llama.cpp samples with the penalties, the temperature and mirostat only, and so does Fabula here.

Log-probabilities (`logprobs`, `top_logprobs`) are the text service's token probabilities in the
model's own distribution (its "before": the raw logits, before penalties and samplers), the
distribution OpenAI and vLLM report: a token's log-probability does not change with the
temperature or a top-p cut that drew it.
"""

from __future__ import annotations

import codecs
import math
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from fabula.text.v1 import text_pb2
from fabula_wire.sampling import MAX_TOP_PROBABILITIES
from gateway.errors import ApiError
from gateway.schemas.common import Text, Uint32
from gateway.schemas.compat import (
    MAX_CHOICES,
    SEED_LIMIT,
    CompatBody,
    SamplingChoice,
    TokenBiases,
    choice_seed,
    completed_order,
    finish_reason,
    sampled,
    spec,
    token_biases,
)
from gateway.schemas.text import Breakers, Phrase, Phrases

# The service names GenerationSpec's fields; an OpenAI client knows them by OpenAI's names.
PARAM_NAMES = {"max_new_tokens": "max_tokens", "stop_sequences": "stop", "tail_free": "tfs",
               "min_new_tokens": "min_tokens", "prompt": "prompt"}
FIELD_PREFIXES = ("spec.sampling.", "spec.")
# llama.cpp's names for the warpers in its `samplers` list, and Fabula's own.
WARPER_NAMES = {"temperature": "temperature", "temp": "temperature", "top_k": "top_k", "top_p": "top_p",
                "top_a": "top_a", "typical_p": "typical_p", "typical": "typical_p", "typ_p": "typical_p",
                "tail_free": "tail_free", "tfs": "tail_free", "tfs_z": "tail_free", "min_p": "min_p",
                "dry": "dry", "xtc": "xtc", "penalties": "repetition_penalty",
                "repetition_penalty": "repetition_penalty"}
# The text service's limit on alternatives per token (spec.top_probabilities), and OpenAI's for
# chat's top_logprobs.
MAX_TOP_LOGPROBS = MAX_TOP_PROBABILITIES
# A name in sampler_order or samplers; _order refuses an unknown one naming its place in the list.
WarperName = Annotated[str, WithJsonSchema({"type": "string", "enum": sorted(WARPER_NAMES)})]
# OpenAI's log-probability for a token too unlikely to have a finite one (JSON has no -inf).
LOGPROB_FLOOR = -9999.0


def openai_error_body(error: ApiError) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    kinds = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
             429: "rate_limit_error", 499: "cancelled"}
    param = error.field
    if param:
        head, _, rest = param.partition(".")
        param = PARAM_NAMES.get(head, head) + (f".{rest}" if rest else "")
    kind = kinds.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    return {"error": {"message": error.message, "type": kind, "param": param or None,
                      "code": error.code.lower()}}


def unsupported(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param}: not supported by this server ({why})", field=param)


class StreamOptions(CompatBody):
    include_usage: bool = False


class GenerationFields(CompatBody):
    """The fields completions and chat completions share."""

    model: Text = Field("", description="a name from /v1/models; empty = the default model")
    temperature: sampled("temperature") | None = None
    top_p: sampled("top_p") | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="completions to generate for the prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Phrase | Phrases | None = None
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT,
                             description="choice i uses seed + i (wrapping below 2^63), so n choices differ and "
                                         "each is reproducible")
    presence_penalty: sampled("presence_penalty") | None = None
    frequency_penalty: sampled("frequency_penalty") | None = None
    logit_bias: TokenBiases | None = Field(None, description="token id (as a string) -> bias in [-100, 100]")
    user: Text | None = None
    # Extra samplers, as vLLM and llama.cpp's server take them.
    top_k: sampled("top_k", off=-1) | None = Field(None, description="0 or -1 = off")
    min_p: sampled("min_p") | None = None
    top_a: sampled("top_a") | None = None
    typical_p: sampled("typical_p") | None = None
    typical: sampled("typical_p") | None = None
    tfs: sampled("tail_free") | None = None
    tfs_z: sampled("tail_free") | None = None
    tail_free: sampled("tail_free") | None = None
    repetition_penalty: sampled("repetition_penalty") | None = None
    repeat_penalty: sampled("repetition_penalty") | None = None
    repetition_penalty_range: sampled("repetition_penalty_range") | None = Field(None, description="0 = all")
    repeat_last_n: sampled("repetition_penalty_range", off=-1) | None = Field(
        None, description="-1 = the whole context, 0 = no penalty (llama.cpp)")
    repetition_penalty_slope: sampled("repetition_penalty_slope") | None = None
    sampler_order: list[WarperName] | None = None
    samplers: list[WarperName] | None = None
    sampler_convention: Literal["fabula", "koboldcpp"] | None = None
    mirostat: sampled("mirostat") | None = Field(None, description="0 off, 1 or 2")
    mirostat_tau: sampled("mirostat_tau") | None = None
    mirostat_eta: sampled("mirostat_eta") | None = None
    dry_multiplier: sampled("dry_multiplier") | None = None
    dry_base: sampled("dry_base") | None = None
    dry_allowed_length: sampled("dry_allowed_length") | None = None
    dry_penalty_last_n: sampled("dry_penalty_last_n", off=-1) | None = Field(
        None, description="-1 = the whole context, 0 = off")
    dry_sequence_breakers: Breakers | None = None
    xtc_probability: sampled("xtc_probability") | None = None
    xtc_threshold: sampled("xtc_threshold") | None = None
    min_tokens: Uint32 = Field(0, description="at most max_tokens")
    preset: Text = Field("", description="a Fabula preset (GET /ai/presets) under the fields given; default neutral")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        return [value] if isinstance(value, str) else value

    def sampling(self) -> SamplingChoice:
        top_k = self.top_k if self.top_k is None or self.top_k >= 0 else 0
        range_ = self.repetition_penalty_range
        if range_ is None and self.repeat_last_n is not None:
            range_ = 0 if self.repeat_last_n == -1 else self.repeat_last_n
            if self.repeat_last_n == 0:  # llama.cpp: 0 = the penalty looks at nothing
                return self._sampling(top_k, None, penalty_off=True)
        return self._sampling(top_k, range_)

    def _sampling(self, top_k: int | None, range_: int | None, penalty_off: bool = False) -> SamplingChoice:
        first = lambda *values: next((v for v in values if v is not None), None)  # noqa: E731
        values = {
            "temperature": self.temperature, "top_p": self.top_p, "top_k": top_k, "min_p": self.min_p,
            "top_a": self.top_a, "typical_p": first(self.typical_p, self.typical),
            "tail_free": first(self.tail_free, self.tfs, self.tfs_z),
            "repetition_penalty": 1.0 if penalty_off else first(self.repetition_penalty, self.repeat_penalty),
            "repetition_penalty_range": range_, "repetition_penalty_slope": self.repetition_penalty_slope,
            "frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty,
            "mirostat": self.mirostat, "mirostat_tau": self.mirostat_tau, "mirostat_eta": self.mirostat_eta,
            "dry_multiplier": 0.0 if self.dry_penalty_last_n == 0 else self.dry_multiplier,
            "dry_base": self.dry_base, "dry_allowed_length": self.dry_allowed_length,
            "dry_penalty_last_n": 0 if self.dry_penalty_last_n == -1 else self.dry_penalty_last_n,
            "xtc_probability": self.xtc_probability, "xtc_threshold": self.xtc_threshold,
        }
        order = completed_order(["temperature"]) if self.mirostat else self._order()
        return SamplingChoice(values=values, order=order, convention=self.sampler_convention,
                              dry_sequence_breakers=self.dry_sequence_breakers)

    def _order(self) -> list[tuple[str, bool]]:
        names = self.sampler_order if self.sampler_order is not None else self.samplers
        if not names:
            return []
        field_name = "sampler_order" if self.sampler_order is not None else "samplers"
        warpers: list[str] = []
        for index, name in enumerate(names):
            warper = WARPER_NAMES.get(name)
            if warper is None:
                raise ApiError(400, f"{field_name}[{index}]: unknown sampler {name!r}; known: "
                                    f"{', '.join(sorted(WARPER_NAMES))}", field=f"{field_name}[{index}]")
            if warper not in warpers:
                warpers.append(warper)
        return completed_order(warpers)

    @property
    def top_logprobs_wanted(self) -> int | None:
        """Alternatives per token the answer reports; None: no logprobs asked for."""
        return None

    def specs(self, prompt: str, max_tokens: int | None) -> list[text_pb2.GenerationSpec]:
        """One GenerationSpec per choice."""
        sampling, biases = self.sampling(), token_biases(self.logit_bias)
        top = self.top_logprobs_wanted
        # The service reports a token's own probability only beside at least one alternative.
        probabilities = 0 if top is None else max(1, top)
        return [spec(model=self.model, prompt=prompt, preset=self.preset, sampling=sampling,
                     max_new_tokens=max_tokens, min_new_tokens=self.min_tokens, stop=list(self.stop or []),
                     seed=None if self.seed is None else choice_seed(self.seed, index), logit_bias=biases,
                     top_probabilities=probabilities)
                for index in range(self.n)]

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionBody(GenerationFields):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)] = Field(
        description="the text to continue (a list of one string is accepted)")
    max_tokens: int | None = Field(16, ge=1, description="default 16, as OpenAI's")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                 description="log-probabilities of the chosen tokens and of this many most likely "
                                             "alternatives per token")
    # What this server does not offer, stated as the only values it takes (_completion_only
    # refuses the rest, saying so).
    echo: bool = Field(False, json_schema_extra={"const": False}, description="not supported: only false")
    suffix: Text | None = Field(None, json_schema_extra={"maxLength": 0}, description="not supported: only empty")
    best_of: int | None = Field(None, json_schema_extra={"minimum": 1, "maximum": 1},
                                description="not supported beyond 1: choices are not ranked; use n")

    @model_validator(mode="after")
    def _completion_only(self) -> CompletionBody:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise unsupported("prompt", "send one prompt per request (a string, or a list of one string)")
        if self.echo:
            raise unsupported("echo", "the prompt is not repeated in the answer")
        if self.suffix:
            raise unsupported("suffix", "insertion between a prompt and a suffix is not offered")
        if self.best_of not in (None, 1):
            raise unsupported("best_of", "choices are not ranked; use n")
        return self

    @property
    def prompt_text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt

    @property
    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs


class ContentPart(CompatBody):
    # Only text is understood; ChatMessage.text refuses another type as not supported.
    type: str = Field(json_schema_extra={"enum": ["text"]}, description="only text parts are supported")
    text: Text = ""


class ChatMessage(CompatBody):
    role: Text = Field(min_length=1)
    content: Text | list[ContentPart] | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for part_index, part in enumerate(self.content):
            if part.type != "text":
                raise unsupported(f"messages[{index}].content[{part_index}]",
                                  f"only text parts are understood, got {part.type!r}")
        return "".join(part.text for part in self.content)


class ResponseFormat(CompatBody):
    type: str | None = Field(None, json_schema_extra={"enum": ["text", None]},
                             description="only plain text answers are supported")


class ChatCompletionBody(GenerationFields):
    # What _chat_only enforces, stated in the OpenAPI document: top_logprobs needs logprobs: true.
    model_config = ConfigDict(json_schema_extra={
        "if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
        "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}})

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="default: the gateway's openai_chat_max_tokens")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: bool | None = Field(None, description="log-probabilities of the chosen tokens")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                     description="with logprobs: this many most likely alternatives per token")
    tools: list[Any] | None = Field(None, json_schema_extra={"maxItems": 0},
                                    description="not supported (no function calling): only empty")
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _chat_only(self) -> ChatCompletionBody:
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs: needs logprobs set to true", field="top_logprobs")
        if self.tools:
            raise unsupported("tools", "function calling is not offered")
        if self.response_format and self.response_format.type not in (None, "text"):
            raise unsupported("response_format", "only plain text answers are offered")
        return self

    def template_request(self) -> text_pb2.ApplyChatTemplateRequest:
        return text_pb2.ApplyChatTemplateRequest(model=self.model, messages=[
            text_pb2.ChatMessage(role=message.role, content=message.text(index))
            for index, message in enumerate(self.messages)])

    def max_new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


# --- answers -----------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def model_list(reply: text_pb2.ListModelsResponse) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0, "owned_by": "fabula"}
                                       for model in reply.models]}


def usage(stats: list[text_pb2.GenerationStats]) -> dict[str, int]:
    """Summed over the choices; the prompt counted once, as OpenAI counts it."""
    prompt = stats[0].prompt_tokens if stats else 0
    completion = sum(item.completion_tokens for item in stats)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _logprob(value: float) -> float:
    return value if math.isfinite(value) else LOGPROB_FLOOR


def _token_string(text: str, raw: bytes) -> str:
    """A token as OpenAI writes it: its text, or `bytes:\\xe2\\x80` for a token holding part of a
    character."""
    if not raw:
        return text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)


class TokenLog:
    """One choice's log-probabilities, piece by piece, in OpenAI's shapes: the legacy object of
    completions ({tokens, token_logprobs, top_logprobs, text_offset}) or chat's `content` list.

    A stop sequence cuts the text, not the tokens the service drew for it: a token that starts
    past the text shown and adds characters to it is one of those, and it and the rest are left
    out. Text offsets count characters from the start of the prompt (`start`), as OpenAI's."""

    def __init__(self, top: int, *, chat: bool, start: int = 0) -> None:
        self.top, self.chat = top, chat
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._chars = self._text_end = start
        self._cut = False

    def add(self, probabilities: Any, text: str) -> dict[str, Any] | None:
        """The log-probabilities of the tokens that came with `text`; None when there are none."""
        self._text_end += len(text)
        kept: list[tuple[int, text_pb2.TokenProbabilities]] = []
        for probs in probabilities:
            if self._cut:
                break
            offset = self._chars
            added = len(self._decoder.decode(probs.token_bytes or probs.text.encode()))
            if offset >= self._text_end and added:
                self._cut = True
                break
            self._chars += added
            kept.append((offset, probs))
        if not kept:
            return None
        if self.chat:
            return {"content": [self._chat_entry(probs) for _, probs in kept]}
        return {"tokens": [_token_string(p.text, p.token_bytes) for _, p in kept],
                "token_logprobs": [_logprob(p.logprob_before) for _, p in kept],
                "top_logprobs": [self._legacy_top(p) for _, p in kept],
                "text_offset": [offset for offset, _ in kept]}

    def _chat_entry(self, probs: text_pb2.TokenProbabilities) -> dict[str, Any]:
        def entry(text: str, raw: bytes, logprob: float) -> dict[str, Any]:
            return {"token": _token_string(text, raw), "logprob": _logprob(logprob),
                    "bytes": list(raw) if raw else None}
        return {**entry(probs.text, probs.token_bytes, probs.logprob_before),
                "top_logprobs": [entry(alt.text, alt.token_bytes, alt.logprob) for alt in probs.before[:self.top]]}

    def _legacy_top(self, probs: text_pb2.TokenProbabilities) -> dict[str, float]:
        # The chosen token is always among them (so up to logprobs + 1 entries), as OpenAI's.
        top = {_token_string(alt.text, alt.token_bytes): _logprob(alt.logprob) for alt in probs.before[:self.top]}
        top.setdefault(_token_string(probs.text, probs.token_bytes), _logprob(probs.logprob_before))
        return top


def _choice_logprobs(reply: text_pb2.GenerateResponse, top: int | None, *, chat: bool,
                     start: int = 0) -> dict[str, Any] | None:
    if top is None:
        return None
    empty: dict[str, Any] = ({"content": []} if chat else
                             {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []})
    return TokenLog(top, chat=chat, start=start).add(reply.probabilities, reply.text) or empty


def completion(replies: list[text_pb2.GenerateResponse], model: str, *, top_logprobs: int | None = None,
               prompt: str = "") -> dict[str, Any]:
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": replies[0].stats.model or model,
            "choices": [{"index": index, "text": reply.text,
                         "logprobs": _choice_logprobs(reply, top_logprobs, chat=False, start=len(prompt)),
                         "finish_reason": finish_reason(reply.stats)} for index, reply in enumerate(replies)],
            "usage": usage([reply.stats for reply in replies])}


def chat_completion(replies: list[text_pb2.GenerateResponse], model: str, *,
                    top_logprobs: int | None = None) -> dict[str, Any]:
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
            "model": replies[0].stats.model or model,
            "choices": [{"index": index, "message": {"role": "assistant", "content": reply.text},
                         "logprobs": _choice_logprobs(reply, top_logprobs, chat=True),
                         "finish_reason": finish_reason(reply.stats)}
                        for index, reply in enumerate(replies)],
            "usage": usage([reply.stats for reply in replies])}


class ChunkWriter:
    """The `data:` payloads of one streamed answer, completion or chat, all with the same id."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, **extra}

    def opening(self, index: int) -> dict[str, Any] | None:
        """Chat streams open each choice with the assistant's role."""
        if not self.chat:
            return None
        return self._chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])

    def text(self, index: int, text: str, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.chat:
            return self._chunk([{"index": index, "delta": {"content": text}, "logprobs": logprobs,
                                 "finish_reason": None}])
        return self._chunk([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}])

    def end(self, index: int, stats: text_pb2.GenerationStats) -> dict[str, Any]:
        self.model = stats.model or self.model
        reason = finish_reason(stats)
        if self.chat:
            return self._chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}])
        return self._chunk([{"index": index, "text": "", "logprobs": None, "finish_reason": reason}])

    def usage(self, stats: list[text_pb2.GenerationStats]) -> dict[str, Any]:
        return self._chunk([], usage=usage(stats))

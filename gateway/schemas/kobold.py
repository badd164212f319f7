"""The KoboldAI / KoboldCpp API bodies and their translation onto the text service's
GenerationSpec, with KoboldCpp's sampler convention so that a KoboldCpp preset gives
KoboldCpp's distribution.

What maps to what (docs/compatible-apis.md has the table): `max_length` → max_new_tokens,
`rep_pen`/`rep_pen_range`/`rep_pen_slope` → the repetition penalty (KoboldCpp's range 0 means no
penalty, Fabula's 0 the whole context, so 0 switches the penalty off), `tfs` → tail_free,
`typical` → typical_p, `sampler_order` (KoboldAI's numeric ids) → Fabula's order, `stop_sequence`
→ stop sequences, `sampler_seed` → seed (-1 = random), `memory` → put before the prompt,
`singleline` → stop at a newline, `use_default_badwordsids` → no end of text before `max_length`,
`banned_tokens` → banned strings, `mirostat`/`mirostat_tau`/`mirostat_eta`, `dry_*` and `xtc_*` →
the samplers of the same names (with mirostat on, KoboldCpp samples with temperature and mirostat
only, and so does this translation).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, WithJsonSchema

from fabula.text.v1 import text_pb2
from fabula_wire.sampling import MAX_STRINGS
from gateway.errors import ApiError
from gateway.schemas.common import UINT32_MAX, Text
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

FIELD_PREFIXES = ("spec.sampling.", "spec.")
# The service names GenerationSpec's fields; a Kobold client knows them by KoboldAI's names.
PARAM_NAMES = {"max_new_tokens": "max_length", "stop_sequences": "stop_sequence", "tail_free": "tfs",
               "typical_p": "typical", "repetition_penalty": "rep_pen", "repetition_penalty_range": "rep_pen_range",
               "repetition_penalty_slope": "rep_pen_slope", "seed": "sampler_seed", "banned_strings": "banned_tokens"}

# KoboldAI's sampler ids; 6, the repetition penalty, goes where the order puts it.
KOBOLD_SAMPLERS = {0: "top_k", 1: "top_a", 2: "top_p", 3: "tail_free", 4: "typical_p", 5: "temperature",
                   6: "repetition_penalty"}
KOBOLDCPP_DEFAULT_ORDER = [6, 0, 1, 3, 4, 2, 5]
# An id in sampler_order; _order refuses an unknown one naming its place in the list.
SamplerId = Annotated[int, WithJsonSchema({"type": "integer", "enum": sorted(KOBOLD_SAMPLERS)})]
# singleline adds a newline to the stop sequences, which the text service takes MAX_STRINGS of.
StopStrings = Annotated[list[Phrase], Field(max_length=MAX_STRINGS - 1)]
# Samplers KoboldCpp offers and Fabula does not; a request that switches one on is refused.
UNSUPPORTED_SAMPLERS = ("dynatemp_range", "smoothing_factor", "nsigma")

# The document's word for those: 0 (off) or absent.
OFF_ONLY: dict[str, Any] = {"anyOf": [{"const": 0}, {"type": "null"}]}

KOBOLD_API_VERSION = "1.2.5"
# Clients (SillyTavern, KoboldAI Lite) switch on streaming, stop sequences, abort and token counts
# by KoboldCpp's name and version; every one of those is served here.
KOBOLDCPP_VERSION = "1.80"


def kobold_error_body(error: ApiError) -> dict[str, Any]:
    """KoboldAI's error shape: {"detail": {"msg", "type"}}."""
    kinds = {400: "bad_input", 401: "unauthorized", 403: "forbidden", 404: "not_found", 429: "too_many_requests",
             499: "cancelled", 503: "service_unavailable"}
    message = error.message
    if error.field:
        head = error.field.split(".")[0].split("[")[0]
        if head in PARAM_NAMES:
            message = message.replace(head, PARAM_NAMES[head], 1)
    return {"detail": {"msg": message, "type": kinds.get(error.status, "server_error"),
                       "field": error.field or None}}


def bad(field: str, message: str) -> ApiError:
    return ApiError(400, f"{field}: {message}", field=field)


class GenerateBody(CompatBody):
    """What SillyTavern and KoboldAI Lite send to /api/v1/generate and /api/extra/generate/stream
    (both send JSON numbers: SillyTavern's kai-settings.js passes every slider through Number(),
    KoboldAI Lite's localsettings hold numbers)."""

    prompt: Text
    memory: Text = Field("", description="KoboldCpp: put before the prompt (the two together at most the "
                                         "text service's max_prompt_chars)")
    max_length: int = Field(80, ge=1, le=UINT32_MAX, description="tokens to generate")
    max_context_length: int | None = Field(None, ge=1, description="accepted; clients trim their prompts to it")
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    temperature: sampled("temperature") | None = None
    top_k: sampled("top_k") | None = Field(None, description="0 = off")
    top_p: sampled("top_p") | None = None
    top_a: sampled("top_a") | None = None
    min_p: sampled("min_p") | None = None
    typical: sampled("typical_p") | None = None
    tfs: sampled("tail_free") | None = None
    rep_pen: sampled("repetition_penalty") | None = None
    rep_pen_range: sampled("repetition_penalty_range") | None = Field(None, description="0 = no penalty")
    rep_pen_slope: sampled("repetition_penalty_slope") | None = None
    presence_penalty: sampled("presence_penalty") | None = None
    sampler_order: list[SamplerId] | None = Field(None, json_schema_extra={"uniqueItems": True},
                                                  description="KoboldAI's sampler ids, each at most once")
    sampler_seed: int | None = Field(None, ge=-1, lt=SEED_LIMIT,
                                     description="-1 = random; choice i uses sampler_seed + i (wrapping below 2^63)")
    stop_sequence: StopStrings | None = None
    singleline: bool = False
    use_default_badwordsids: bool = False
    banned_tokens: Phrases | None = None
    logit_bias: TokenBiases | None = None
    genkey: Text | None = Field(None, max_length=128, description="names the generation for /api/extra/abort")
    dynatemp_range: float | None = Field(None, json_schema_extra=OFF_ONLY)
    smoothing_factor: float | None = Field(None, json_schema_extra=OFF_ONLY)
    mirostat: sampled("mirostat") | None = Field(None, description="0 off, 1 or 2")
    mirostat_tau: sampled("mirostat_tau") | None = None
    mirostat_eta: sampled("mirostat_eta") | None = None
    dry_multiplier: sampled("dry_multiplier") | None = None
    dry_base: sampled("dry_base") | None = None
    dry_allowed_length: sampled("dry_allowed_length") | None = None
    dry_penalty_last_n: sampled("dry_penalty_last_n") | None = Field(None, description="0 = the whole context")
    dry_sequence_breakers: Breakers | None = None
    xtc_threshold: sampled("xtc_threshold") | None = None
    xtc_probability: sampled("xtc_probability") | None = None
    nsigma: float | None = Field(None, json_schema_extra=OFF_ONLY)

    def sampling(self) -> SamplingChoice:
        for name in UNSUPPORTED_SAMPLERS:
            if getattr(self, name):
                raise bad(name, "this sampler is not offered by this server; send 0 (off)")
        penalty, presence = self.rep_pen, self.presence_penalty
        if self.rep_pen_range == 0:
            # KoboldCpp: a range of 0 looks at no tokens, so no penalty at all.
            penalty, presence = 1.0, 0.0
        values = {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "top_a": self.top_a,
                  "min_p": self.min_p, "typical_p": self.typical, "tail_free": self.tfs,
                  "repetition_penalty": penalty, "repetition_penalty_range": self.rep_pen_range or None,
                  "repetition_penalty_slope": self.rep_pen_slope, "presence_penalty": presence,
                  "mirostat": self.mirostat, "mirostat_tau": self.mirostat_tau, "mirostat_eta": self.mirostat_eta,
                  "dry_multiplier": self.dry_multiplier, "dry_base": self.dry_base,
                  "dry_allowed_length": self.dry_allowed_length, "dry_penalty_last_n": self.dry_penalty_last_n,
                  "xtc_threshold": self.xtc_threshold, "xtc_probability": self.xtc_probability}
        # KoboldCpp: with mirostat on, the repetition penalty, the temperature and mirostat run;
        # the sampler order's truncations do not.
        order = completed_order(["temperature"]) if self.mirostat else self._order()
        return SamplingChoice(values=values, order=order, convention="koboldcpp",
                              dry_sequence_breakers=self.dry_sequence_breakers)

    def _order(self) -> list[tuple[str, bool]]:
        ids = self.sampler_order if self.sampler_order else KOBOLDCPP_DEFAULT_ORDER
        warpers: list[str] = []
        for index, sampler_id in enumerate(ids):
            warper = KOBOLD_SAMPLERS.get(sampler_id)
            if warper is None:
                raise bad(f"sampler_order[{index}]", f"unknown sampler id {sampler_id} (KoboldAI's ids are 0-6)")
            if warper in warpers:
                raise bad(f"sampler_order[{index}]", f"sampler id {sampler_id} appears twice")
            warpers.append(warper)
            if warper == "top_p":
                warpers.append("min_p")  # KoboldCpp applies min-p together with top-p
        if "min_p" not in warpers and self.min_p:
            warpers.append("min_p")
        return completed_order(warpers)

    def specs(self) -> list[text_pb2.GenerationSpec]:
        stop = list(self.stop_sequence or [])
        if self.singleline:
            stop.append("\n")
        seed = None if self.sampler_seed in (None, -1) else self.sampler_seed
        sampling, biases = self.sampling(), token_biases(self.logit_bias)
        prompt = self.memory + self.prompt
        specs = [spec(model="", prompt=prompt, preset="", sampling=sampling, max_new_tokens=self.max_length,
                      min_new_tokens=self.max_length if self.use_default_badwordsids else 0, stop=stop,
                      seed=None if seed is None else choice_seed(seed, index), logit_bias=biases)
                 for index in range(self.n)]
        for message in specs:
            message.banned_strings.extend(self.banned_tokens or [])
        return specs


class TokenCountBody(CompatBody):
    prompt: str

    def to_pb(self) -> text_pb2.TokenizeRequest:
        return text_pb2.TokenizeRequest(text=self.prompt)


class AbortBody(CompatBody):
    genkey: str = Field("", max_length=128)


def _reason(stats: text_pb2.GenerationStats | None) -> str:
    return "abort" if stats is None else finish_reason(stats)  # None: stopped by /api/extra/abort


def generate_result(choices: list[tuple[str, text_pb2.GenerationStats | None]]) -> dict[str, Any]:
    """Each choice's text and, unless it was aborted, its final stats."""
    return {"results": [{"text": text, "finish_reason": _reason(stats),
                         "prompt_tokens": stats.prompt_tokens if stats else 0,
                         "completion_tokens": stats.completion_tokens if stats else 0} for text, stats in choices]}


def stream_token(text: str) -> dict[str, Any]:
    return {"token": text, "finish_reason": None}


def stream_end(stats: text_pb2.GenerationStats | None) -> dict[str, Any]:
    return {"token": "", "finish_reason": _reason(stats)}


def token_count(reply: text_pb2.TokenizeResponse) -> dict[str, Any]:
    return {"value": len(reply.token_ids), "ids": list(reply.token_ids)}


def default_model(reply: text_pb2.ListModelsResponse) -> text_pb2.ModelInfo | None:
    return next((model for model in reply.models if model.is_default), reply.models[0] if reply.models else None)

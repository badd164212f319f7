"""What the compatible APIs (OpenAI, KoboldAI, NovelAI) share on their way to the text service:
their bodies' strictness, the sampling fields by Fabula's names with Fabula's ranges, token-id
biases, and the finish reasons they report.

The bodies are as strict as the native ones: their clients (SillyTavern, KoboldAI Lite, the
`openai` package) send JSON numbers and booleans, never numeric strings, so a string where a
number is meant is refused naming the field. Every value is checked here against the range the
text service takes (`fabula_wire.sampling`), under the client's own field name, and the OpenAPI
document states the same range, so that a body valid by the document is one the gateway and the
service accept. A compatible request starts from the "neutral" preset (every sampler off,
temperature 1), as the peers do: a field the client leaves out is off, never a Fabula preset's
choice, unless the client names a `preset` itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from pydantic import AfterValidator, Field, WithJsonSchema

from fabula.text.v1 import text_pb2
from fabula_wire.sampling import BIAS_RANGE, MAX_LOGIT_BIASES, MAX_SEED, SAMPLING_RANGES
from gateway.schemas.common import UINT32_MAX, RequestBody, ranged

NEUTRAL_PRESET = "neutral"
# The most choices (`n`) one request may ask for.
MAX_CHOICES = 16

# Fabula's default warper order, the one a client's partial order is completed with.
DEFAULT_ORDER = ("temperature", "top_k", "top_a", "top_p", "typical_p", "tail_free", "min_p")

SAMPLING_NAMES = ("temperature", "top_k", "top_p", "top_a", "typical_p", "tail_free", "min_p",
                  "repetition_penalty", "repetition_penalty_range", "repetition_penalty_slope",
                  "frequency_penalty", "presence_penalty", "mirostat", "mirostat_tau", "mirostat_eta",
                  "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n", "xtc_threshold",
                  "xtc_probability")


class CompatBody(RequestBody):
    """Strict about types (an integer where a number is meant is taken, and 3.0 where an integer is
    meant), ignores fields it does not know (clients send many)."""


def sampled(name: str, *, off: int | None = None) -> Any:
    """The range the text service takes for its sampling field `name`, for a compatible field that
    carries it; `off` is a client's own value below that range meaning "off" or "the whole
    context" (llama.cpp's -1), which the translation turns into Fabula's."""
    allowed = SAMPLING_RANGES[name]
    if off is not None:
        allowed = replace(allowed, low=min(off, allowed.low), low_open=False)
    return ranged(allowed)


def at_most_pattern(largest: int) -> str:
    """A pattern for the decimal numbers 0 to `largest`, without leading zeros: what JSON Schema's
    propertyNames can say of an object's keys that are token ids."""
    digits = str(largest)
    choices = []
    if len(digits) > 1:
        choices.append("[0-9]")
    if len(digits) > 2:
        choices.append(f"[1-9][0-9]{{1,{len(digits) - 2}}}")
    for index, digit in enumerate(digits):
        low = 1 if index == 0 and len(digits) > 1 else 0
        if int(digit) - 1 >= low:
            rest = len(digits) - index - 1
            choices.append(digits[:index] + f"[{low}-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    choices.append(digits)
    return f"^(?:{'|'.join(choices)})$"


# A token id as an object key ({"50256": -100}); the OpenAPI document narrows it to the model's
# vocabulary at run time (gateway.contract), the text service checks that bound.
TOKEN_ID_KEY = at_most_pattern(UINT32_MAX)


def _token_id_keys(value: dict[str, float]) -> dict[str, float]:
    # re.search, as JSON Schema validators match a pattern (so "5\n" is 5, as `$` allows).
    for key in value:
        if not re.search(TOKEN_ID_KEY, key):
            raise ValueError(f"keys must be token ids (0 to {UINT32_MAX}), got {key!r}")
    return value


# OpenAI's and KoboldCpp's logit_bias: token id (as a string) -> bias.
TokenBiases = Annotated[
    dict[str, ranged(BIAS_RANGE)], Field(max_length=MAX_LOGIT_BIASES), AfterValidator(_token_id_keys),
    WithJsonSchema({"type": "object", "propertyNames": {"pattern": TOKEN_ID_KEY},
                    "additionalProperties": BIAS_RANGE.json_schema(), "maxProperties": MAX_LOGIT_BIASES})]


def token_biases(value: dict[str, float] | None) -> list[tuple[int, float]]:
    """A checked logit_bias as (token id, bias) pairs."""
    return [(int(key), bias) for key, bias in (value or {}).items()]


@dataclass
class SamplingChoice:
    """Sampling fields by Fabula's names (None = leave to the preset), the order and the convention."""

    values: dict[str, float | int | None] = field(default_factory=dict)
    order: list[tuple[str, bool]] = field(default_factory=list)  # (warper, enabled); empty = default
    convention: str | None = None  # "fabula" | "koboldcpp"
    dry_sequence_breakers: list[str] | None = None  # None = leave to the preset

    def to_pb(self) -> text_pb2.SamplingParameters:
        message = text_pb2.SamplingParameters(sampler_order=[
            text_pb2.SamplerStep(sampler=text_pb2.Sampler.Value(f"SAMPLER_{name.upper()}"), enabled=enabled)
            for name, enabled in self.order])
        for name in SAMPLING_NAMES:
            value = self.values.get(name)
            if value is not None:
                setattr(message, name, value)
        if self.convention is not None:
            message.sampler_convention = text_pb2.SamplerConvention.Value(
                f"SAMPLER_CONVENTION_{self.convention.upper()}")
        if self.dry_sequence_breakers is not None:
            message.dry_sequence_breakers.SetInParent()  # an empty list is set too: no breakers
            message.dry_sequence_breakers.breakers.extend(self.dry_sequence_breakers)
        return message


# Seeds as the document states them: below 2**63, the next power of two after the largest seed, so
# that a generator drawing through floats (2**63 - 1 rounds to 2**63) stays inside the bound.
SEED_LIMIT = MAX_SEED + 1


def choice_seed(seed: int, index: int) -> int:
    """The seed of choice `index` of a request with `seed`: seed + index, wrapping past the largest
    seed, so that every seed the document allows gives n reproducible, different choices."""
    return (seed + index) % SEED_LIMIT


def completed_order(named: list[str]) -> list[tuple[str, bool]]:
    """A client's order of warpers as Fabula's full order: the named ones run in that order, every
    other warper is switched off (a sampler left out of KoboldCpp's or llama.cpp's list does not run)."""
    order = [(name, True) for name in named]
    order += [(name, False) for name in DEFAULT_ORDER if name not in named]
    return order


def spec(*, model: str, prompt: str, preset: str, sampling: SamplingChoice, max_new_tokens: int | None,
         min_new_tokens: int, stop: list[str], seed: int | None,
         logit_bias: list[tuple[int, float]] = (), top_probabilities: int = 0) -> text_pb2.GenerationSpec:
    message = text_pb2.GenerationSpec(
        model=model, prompt=prompt, preset=preset or NEUTRAL_PRESET, sampling=sampling.to_pb(),
        min_new_tokens=min_new_tokens, stop_sequences=stop, top_probabilities=top_probabilities,
        logit_bias=[text_pb2.LogitBias(token_id=token, bias=bias) for token, bias in logit_bias])
    if max_new_tokens is not None:
        message.max_new_tokens = max_new_tokens
    if seed is not None:
        message.seed = seed
    return message


def finish_reason(stats: text_pb2.GenerationStats) -> str:
    """OpenAI's and KoboldCpp's word for why a generation ended: "length" or "stop"."""
    return "length" if stats.finish_reason == text_pb2.FINISH_REASON_LENGTH else "stop"

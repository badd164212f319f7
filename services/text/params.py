"""A generation request as the domain sees it: resolved against a preset, validated field by field.

`GenerationSpec` is the request as the client sent it (`wire.spec_from_pb` builds it);
`GenerationParams.from_spec` validates it in one pass (every error names the request field and its
value), before any model work. Checks that need the model (token ids within the vocabulary) are in
`check_against_vocab`, run once the model is known.

The numeric sampling controls are declared once, on `SamplingParams`: each field's neutral value
(the value that turns the control off, also its default), its allowed range and what it does.
`SAMPLING_FIELDS` is read from those declarations; validation, the samplers' "is this control off"
checks and the protobuf translation all read it. One control is a choice rather than a number:
`sampler_convention`, whose definition the samplers follow where the peers disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from enum import Enum
from typing import Any

import torch

from fabula_wire.sampling import (
    BIAS_RANGE,
    MAX_CFG_UC_CHARS,
    MAX_DRY_BREAKER_CHARS,
    MAX_DRY_BREAKERS,
    MAX_LOGIT_BIASES,
    MAX_SEED,
    MAX_STRING_CHARS,
    MAX_STRINGS,
    MAX_TOKEN_COUNT,
    MAX_TOP_PROBABILITIES,
    SAMPLING_RANGES,
    Range,
)
from services.text.context import StoryContext
from services.toolkit.errors import InvalidArgument

__all__ = ["BIAS_RANGE", "MAX_TOKEN_COUNT", "MAX_TOP_PROBABILITIES", "Range"]


class SamplerName(Enum):
    """The orderable steps, named as requests and preset files name them: the warpers, and the
    penalties (which change logits of tokens the context holds but cut nothing)."""

    TEMPERATURE = "temperature"
    TOP_K = "top_k"
    TOP_P = "top_p"
    TOP_A = "top_a"
    TYPICAL_P = "typical_p"
    TAIL_FREE = "tail_free"
    MIN_P = "min_p"
    # Repetition, frequency and presence penalties, as one step (they share a window).
    REPETITION_PENALTY = "repetition_penalty"
    PHRASE_REPETITION_PENALTY = "phrase_repetition_penalty"
    DRY = "dry"
    XTC = "xtc"
    UNIFIED = "unified"
    MIROSTAT = "mirostat"

    @property
    def key(self) -> str:
        return self.value

    @property
    def controls(self) -> tuple[str, ...]:
        """The `SamplingParams` fields that switch this step on: it runs when any of them is off
        its neutral value (XTC also needs a threshold that can keep two tokens)."""
        return _STEP_CONTROLS.get(self, (self.value,))

    @property
    def is_penalty(self) -> bool:
        return self in PENALTY_STEPS

    @property
    def is_classic(self) -> bool:
        """One of the seven warpers every explicit order must name (the order's original form)."""
        return self in CLASSIC_WARPERS

    @classmethod
    def parse(cls, value: Any, field_name: str) -> SamplerName:
        """A sampler from its name ("top_p", "SAMPLER_TOP_P"); anything else is refused."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper().removeprefix("SAMPLER_")]
            except KeyError:
                pass
        names = ", ".join(name.key for name in cls)
        raise InvalidArgument(field_name, value, f"unknown sampler; one of {names}")


_STEP_CONTROLS: dict[SamplerName, tuple[str, ...]] = {
    SamplerName.REPETITION_PENALTY: ("repetition_penalty", "frequency_penalty", "presence_penalty"),
    SamplerName.DRY: ("dry_multiplier",),
    SamplerName.XTC: ("xtc_probability",),
    SamplerName.UNIFIED: ("unified_linear", "unified_quad", "unified_conf"),
}
PENALTY_STEPS = frozenset({SamplerName.REPETITION_PENALTY, SamplerName.PHRASE_REPETITION_PENALTY, SamplerName.DRY})
CLASSIC_WARPERS = (SamplerName.TEMPERATURE, SamplerName.TOP_K, SamplerName.TOP_A, SamplerName.TOP_P,
                   SamplerName.TYPICAL_P, SamplerName.TAIL_FREE, SamplerName.MIN_P)


class PhraseRepetitionPenalty(Enum):
    """NovelAI's phrase repetition penalty levels, named as requests and preset files name them.
    Each level is (shortest repeated phrase it penalises, in tokens; logit subtracted for the
    token that would extend such a phrase once more) in `samplers.PHRASE_LEVELS`."""

    OFF = "off"
    VERY_LIGHT = "very_light"
    LIGHT = "light"
    MEDIUM = "medium"
    AGGRESSIVE = "aggressive"
    VERY_AGGRESSIVE = "very_aggressive"

    @property
    def key(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Any, field_name: str) -> PhraseRepetitionPenalty:
        """A level from its name ("medium", "PHRASE_REPETITION_PENALTY_MEDIUM")."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper().removeprefix("PHRASE_REPETITION_PENALTY_")]
            except KeyError:
                pass
        names = ", ".join(name.key for name in cls)
        raise InvalidArgument(field_name, value, f"unknown phrase repetition penalty level; one of {names}")


class SamplerConvention(Enum):
    """Whose definition the samplers follow where the peers disagree, named as requests and
    preset files name it. The differences, each beside the sampler it changes in `samplers.py`:

    - repetition_penalty_slope: FABULA is KoboldAI's (and NovelAI's) sigmoid ramp over the range,
      0 = off, 1 = linear; KOBOLDCPP penalises the older half of the range with
      1 + (penalty - 1) * slope and the newer half fully, so its default 1 means no slope.
    - tail_free: FABULA is KoboldAI's cut (the token where the curvature's CDF first passes z
      stays) on the whole row, masked tokens counted as zero probabilities; KOBOLDCPP is
      llama.cpp's (that token goes) on the tokens still in the running only.
    - top_k: FABULA keeps every token tied with the k-th (transformers, KoboldAI); KOBOLDCPP
      keeps exactly k.
    - typical_p: FABULA keeps every token tied with the last one needed (transformers) and stops
      once the mass reaches typical_p; KOBOLDCPP keeps exactly the tokens needed to pass it.
    """

    FABULA = "fabula"
    KOBOLDCPP = "koboldcpp"

    @property
    def key(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Any, field_name: str) -> SamplerConvention:
        """A convention from its name ("koboldcpp", "SAMPLER_CONVENTION_KOBOLDCPP")."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper().removeprefix("SAMPLER_CONVENTION_")]
            except KeyError:
                pass
        names = ", ".join(name.key for name in cls)
        raise InvalidArgument(field_name, value, f"unknown sampler convention; one of {names}")


# Fabula's default order puts temperature first, as transformers does: the truncations then judge
# the distribution that is actually sampled, so a hot temperature widens the kept set instead of
# only flattening a set cut at temperature 1. The truncations follow from coarse to fine. (This is
# not KoboldCpp's default, which runs top_k, top_a, tail_free, typical_p, top_p and temperature
# last; a request or preset that wants it gives that order.)
# The penalties run before every warper (as they always did); unified sampling reshapes the
# distribution right after the temperature, as the temperature does; XTC removes the top choices
# from what the truncations left; mirostat, which learns from the drawn token's surprise in the
# distribution actually sampled, comes last.
DEFAULT_ORDER: tuple[tuple[SamplerName, bool], ...] = tuple((name, True) for name in (
    SamplerName.REPETITION_PENALTY, SamplerName.PHRASE_REPETITION_PENALTY, SamplerName.DRY,
    SamplerName.TEMPERATURE, SamplerName.UNIFIED, SamplerName.TOP_K, SamplerName.TOP_A, SamplerName.TOP_P,
    SamplerName.TYPICAL_P, SamplerName.TAIL_FREE, SamplerName.MIN_P, SamplerName.XTC, SamplerName.MIROSTAT))


@dataclass(frozen=True)
class Choice:
    """Allowed values of a sampling control that names one of an enum's members."""

    kind: type[SamplerConvention] | type[PhraseRepetitionPenalty]

    def parse(self, field_name: str, value: Any) -> Any:
        """The member `value` names; anything else is refused naming the field."""
        return self.kind.parse(value, field_name)


@dataclass(frozen=True)
class SamplingField:
    """One sampling control: the value that turns it off (or, for a choice, the default), the
    values it may take, and what it does."""

    neutral: Any
    allowed: Range | Choice
    doc: str

    def parse(self, field_name: str, value: Any) -> Any:
        """`value` checked against the allowed values; a choice's name becomes its member."""
        if isinstance(self.allowed, Choice):
            return self.allowed.parse(field_name, value)
        check_range(self.allowed, field_name, value)
        return value

    def is_neutral(self, value: Any) -> bool:
        """Whether `value` leaves the control off (validated values only reach it)."""
        return value == self.neutral


def check_range(allowed: Range, field_name: str, value: Any) -> None:
    """Refuse `value`, naming the field, when `allowed` excludes it."""
    problem = allowed.problem(value)
    if problem:
        raise InvalidArgument(field_name, value, problem)


def _control(neutral: Any, allowed: Range | Choice, doc: str) -> Any:
    """A `SamplingParams` field whose default is its neutral value, with its range and doc."""
    return field(default=neutral, metadata={"control": SamplingField(neutral, allowed, doc)})


# KoboldCpp's and SillyTavern's default DRY sequence breakers.
DEFAULT_DRY_BREAKERS: tuple[str, ...] = ("\n", ":", "\"", "*")

# A temperature of exactly this value means greedy decoding: only the most likely token.
GREEDY_TEMPERATURE = 0.0




@dataclass(frozen=True)
class SamplingParams:
    """Resolved sampling controls (neutral values where the control is off)."""

    # The ranges are fabula_wire's, so that the gateway states the same ones. Dividing float32
    # logits by a temperature near float32's smallest values overflows them (its floor).
    temperature: float = _control(1.0, SAMPLING_RANGES["temperature"],
                                  "divides the logits; 0 is greedy decoding")
    top_k: int = _control(0, SAMPLING_RANGES["top_k"],
                          "keeps the k most likely tokens; 0 is off")
    top_p: float = _control(1.0, SAMPLING_RANGES["top_p"],
                            "nucleus: keeps the most likely tokens holding this much of the mass")
    top_a: float = _control(0.0, SAMPLING_RANGES["top_a"], "keeps tokens with p >= top_a * p_max^2")
    typical_p: float = _control(1.0, SAMPLING_RANGES["typical_p"],
                                "locally typical: keeps the tokens nearest the entropy, up to this mass")
    tail_free: float = _control(1.0, SAMPLING_RANGES["tail_free"],
                                "tail-free z: cuts where the curvature of the sorted probabilities reaches z")
    min_p: float = _control(0.0, SAMPLING_RANGES["min_p"], "keeps tokens with p >= min_p * p_max")
    repetition_penalty: float = _control(1.0, SAMPLING_RANGES["repetition_penalty"],
                                         "divides positive (multiplies negative) logits of tokens in the range")
    repetition_penalty_range: int = _control(0, SAMPLING_RANGES["repetition_penalty_range"],
                                             "how many recent context tokens the penalties see; 0 is all")
    # The slope's meaning depends on the sampler convention (see SamplerConvention): FABULA's
    # neutral 0 is KoboldAI's "no slope"; KoboldCpp's "no slope" is 1.
    repetition_penalty_slope: float = _control(
        0.0, SAMPLING_RANGES["repetition_penalty_slope"],
        "fades the repetition penalty towards the range's older end; FABULA: KoboldAI's ramp, 0 is flat, "
        "1 linear; KOBOLDCPP: the older half gets 1 + (penalty - 1) * slope, 1 is flat")
    frequency_penalty: float = _control(0.0, SAMPLING_RANGES["frequency_penalty"], "subtracted once per occurrence in the range")
    presence_penalty: float = _control(0.0, SAMPLING_RANGES["presence_penalty"], "subtracted once if the token occurs in the range")
    repetition_penalty_whitelist: tuple[int, ...] = ()
    phrase_repetition_penalty: PhraseRepetitionPenalty = _control(
        PhraseRepetitionPenalty.OFF, Choice(PhraseRepetitionPenalty),
        "NovelAI's levels: penalises the token that would repeat a phrase of the context once more; "
        "off, very_light, light, medium, aggressive, very_aggressive")
    dry_multiplier: float = _control(0.0, SAMPLING_RANGES["dry_multiplier"], "DRY: strength of the repeated-sequence penalty; 0 is off")
    dry_base: float = _control(1.75, SAMPLING_RANGES["dry_base"],
                               "DRY: the penalty grows by this factor per token of repeat beyond the allowed length")
    dry_allowed_length: int = _control(2, SAMPLING_RANGES["dry_allowed_length"],
                                       "DRY: repeats up to this many tokens long are not penalised")
    dry_penalty_last_n: int = _control(0, SAMPLING_RANGES["dry_penalty_last_n"],
                                       "DRY: how many recent context tokens it looks at; 0 is all")
    dry_sequence_breakers: tuple[str, ...] = DEFAULT_DRY_BREAKERS
    xtc_threshold: float = _control(0.1, SAMPLING_RANGES["xtc_threshold"],
                                    "XTC: tokens at least this likely are the top choices (above 0.5 it is off)")
    xtc_probability: float = _control(
        0.0, SAMPLING_RANGES["xtc_probability"], "XTC: chance per token of removing every top choice but the least likely; 0 is off")
    unified_linear: float = _control(1.0, SAMPLING_RANGES["unified_linear"],
                                     "unified: multiplies the log-probabilities (an inverse temperature); 1 is neutral")
    unified_quad: float = _control(0.0, SAMPLING_RANGES["unified_quad"],
                                   "unified: subtracts this times the squared log-probability; 0 is off")
    unified_conf: float = _control(0.0, SAMPLING_RANGES["unified_conf"],
                                   "unified: adds this times the entropy to the linear factor; 0 is off")
    mirostat: int = _control(0, SAMPLING_RANGES["mirostat"], "mirostat version 1 or 2; 0 is off")
    mirostat_tau: float = _control(5.0, SAMPLING_RANGES["mirostat_tau"], "mirostat: the target surprise, in bits")
    mirostat_eta: float = _control(0.1, SAMPLING_RANGES["mirostat_eta"], "mirostat: the learning rate of mu")
    cfg_scale: float = _control(1.0, SAMPLING_RANGES["cfg_scale"],
                                "classifier-free guidance: uncond + scale * (cond - uncond); 1 is off")
    cfg_uc: str = ""
    order: tuple[tuple[SamplerName, bool], ...] = DEFAULT_ORDER
    sampler_convention: SamplerConvention = _control(
        SamplerConvention.FABULA, Choice(SamplerConvention),
        "whose definition of the slope, tail_free, top_k and typical_p to follow: fabula (KoboldAI, "
        "transformers) or koboldcpp")
    whitelist_tensor: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.repetition_penalty_whitelist and self.whitelist_tensor is None:
            object.__setattr__(self, "whitelist_tensor",
                               torch.tensor(self.repetition_penalty_whitelist, dtype=torch.long))

    def is_off(self, name: str) -> bool:
        """Whether the numeric control `name` is at its neutral value."""
        return SAMPLING_FIELDS[name].is_neutral(getattr(self, name))

    def step_is_off(self, step: SamplerName) -> bool:
        """Whether the ordered step `step` would change nothing with these values."""
        if step == SamplerName.XTC and self.xtc_threshold > 0.5:
            return True  # no two tokens can both be that likely
        return all(self.is_off(name) for name in step.controls)

    @cached_property
    def active_steps(self) -> tuple[SamplerName, ...]:
        """The enabled steps that change something, in order (read every decode step, so worked
        out once per parameter set)."""
        return tuple(name for name, enabled in self.order if enabled and not self.step_is_off(name))

    @property
    def uses_guidance(self) -> bool:
        return not self.is_off("cfg_scale")

    @property
    def has_penalties(self) -> bool:
        return not (self.is_off("repetition_penalty") and self.is_off("frequency_penalty")
                    and self.is_off("presence_penalty"))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], field_prefix: str,
                     base: SamplingParams | None = None) -> SamplingParams:
        """Validate a plain mapping (a preset file, or a request's set fields) over `base`."""
        base = base or cls()
        # "sampler_order" is the request's (and preset files') name for `order`.
        known = ({f.name for f in fields(cls)} - {"whitelist_tensor", "order"}) | {"sampler_order"}
        unknown = set(values) - known
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidArgument(f"{field_prefix}{name}", values[name], "unknown sampling field")
        resolved: dict[str, Any] = {}
        for name, value in values.items():
            where = f"{field_prefix}{name}"
            if name in SAMPLING_FIELDS:
                resolved[name] = SAMPLING_FIELDS[name].parse(where, value)
            elif name == "repetition_penalty_whitelist":
                ids = tuple(value)
                for index, token in enumerate(ids):
                    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                        raise InvalidArgument(f"{where}[{index}]", token, "must be a token id (integer >= 0)")
                resolved[name] = ids
            elif name == "sampler_order":
                resolved["order"] = parse_order(value, where)
            elif name == "dry_sequence_breakers":
                resolved[name] = _parse_breakers(value, where)
            elif name == "cfg_uc":
                if not isinstance(value, str):
                    raise InvalidArgument(where, value, "must be a string")
                if len(value) > MAX_CFG_UC_CHARS:
                    raise InvalidArgument(where, value, f"at most {MAX_CFG_UC_CHARS} characters")
                resolved[name] = value
        return replace(base, **resolved, whitelist_tensor=None)


# The numeric sampling controls, read from `SamplingParams`' declarations: name → neutral value,
# allowed range, doc.
SAMPLING_FIELDS: dict[str, SamplingField] = {
    f.name: f.metadata["control"] for f in fields(SamplingParams) if "control" in f.metadata}


def is_greedy(temperature: float) -> bool:
    return temperature == GREEDY_TEMPERATURE


def _parse_breakers(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidArgument(where, value, "must be a list of strings")
    if len(value) > MAX_DRY_BREAKERS:
        raise InvalidArgument(where, len(value), f"at most {MAX_DRY_BREAKERS} entries")
    for index, breaker in enumerate(value):
        if not isinstance(breaker, str) or not breaker or len(breaker) > MAX_DRY_BREAKER_CHARS:
            raise InvalidArgument(f"{where}[{index}]", breaker, f"must be 1 to {MAX_DRY_BREAKER_CHARS} characters")
    return tuple(value)


def parse_order(steps: Sequence[Any], field_name: str) -> tuple[tuple[SamplerName, bool], ...]:
    """The steps in the order given, each once, each enabled or not. The seven classic warpers
    must all be named; a newer step left out takes its default place: a penalty before the
    order's first step (penalties always ran first), the others after its last, in
    `DEFAULT_ORDER`'s order."""
    order: list[tuple[SamplerName, bool]] = []
    seen: set[SamplerName] = set()
    for index, step in enumerate(steps):
        where = f"{field_name}[{index}]"
        if isinstance(step, Mapping):
            name, enabled = step.get("sampler"), step.get("enabled", True)
        else:
            name, enabled = step, True
        sampler = SamplerName.parse(name, f"{where}.sampler")
        if sampler in seen:
            raise InvalidArgument(where, sampler.key, "sampler appears twice in the order")
        if not isinstance(enabled, bool):
            raise InvalidArgument(f"{where}.enabled", enabled, "must be true or false")
        seen.add(sampler)
        order.append((sampler, enabled))
    missing = [name.key for name in CLASSIC_WARPERS if name not in seen]
    if missing:
        raise InvalidArgument(field_name, [s.key for s, _ in order],
                              f"must name every sampler exactly once; missing {', '.join(missing)}")
    left_out = [(name, True) for name, _ in DEFAULT_ORDER if name not in seen]
    return (tuple(step for step in left_out if step[0].is_penalty) + tuple(order)
            + tuple(step for step in left_out if not step[0].is_penalty))


@dataclass(frozen=True)
class Limits:
    """Bounds a request must stay within (from the service's settings)."""

    max_new_tokens: int = 1024
    max_prompt_chars: int = 200_000
    max_strings: int = MAX_STRINGS  # stop sequences, banned strings, phrase biases, each
    max_string_chars: int = MAX_STRING_CHARS
    max_logit_biases: int = MAX_LOGIT_BIASES
    max_seed: int = MAX_SEED


DEFAULT_MAX_NEW_TOKENS = 40


@dataclass(frozen=True)
class GenerationSpec:
    """A generation request as the client sent it, before validation: `None` where an optional
    field was left unset, `sampling` holding only the sampling fields the request set (by their
    request names), so that a preset supplies the rest."""

    model: str = ""
    prompt: str = ""
    context: StoryContext | None = None  # when set, the prompt is built from it instead
    preset: str = ""
    sampling: Mapping[str, Any] = field(default_factory=dict)
    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    stop_sequences: tuple[str, ...] = ()
    banned_strings: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    phrase_bias: tuple[tuple[str, float], ...] = ()  # (phrase, bias)
    seed: int | None = None
    top_probabilities: int = 0




@dataclass(frozen=True)
class GenerationParams:
    """Everything about a generation except its input text."""

    sampling: SamplingParams
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    min_new_tokens: int = 0
    stop_sequences: tuple[str, ...] = ()
    banned_strings: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()
    phrase_bias: tuple[tuple[str, float], ...] = ()
    seed: int | None = None
    top_probabilities: int = 0  # alternatives reported per generated token; 0 = none

    @classmethod
    def from_spec(cls, spec: GenerationSpec, base_sampling: SamplingParams, limits: Limits,
                  prefix: str = "spec.") -> GenerationParams:
        sampling = SamplingParams.from_mapping(spec.sampling, f"{prefix}sampling.", base_sampling)
        # A deployment whose limit is below the default gives its limit to requests that set none.
        max_new = (spec.max_new_tokens if spec.max_new_tokens is not None
                   else min(DEFAULT_MAX_NEW_TOKENS, limits.max_new_tokens))
        if not 1 <= max_new <= limits.max_new_tokens:
            raise InvalidArgument(f"{prefix}max_new_tokens", max_new,
                                  f"must be within [1, {limits.max_new_tokens}]")
        if spec.min_new_tokens > max_new:
            raise InvalidArgument(f"{prefix}min_new_tokens", spec.min_new_tokens,
                                  f"must not exceed max_new_tokens ({max_new})")
        stops = _check_strings(spec.stop_sequences, f"{prefix}stop_sequences", limits)
        banned = _check_strings(spec.banned_strings, f"{prefix}banned_strings", limits)
        if len(spec.logit_bias) > limits.max_logit_biases:
            raise InvalidArgument(f"{prefix}logit_bias", len(spec.logit_bias),
                                  f"at most {limits.max_logit_biases} entries")
        for index, (_, bias) in enumerate(spec.logit_bias):
            check_range(BIAS_RANGE, f"{prefix}logit_bias[{index}].bias", bias)
        phrases = _check_strings([phrase for phrase, _ in spec.phrase_bias], f"{prefix}phrase_bias", limits,
                                 item_field="phrase")
        for index, (_, bias) in enumerate(spec.phrase_bias):
            check_range(BIAS_RANGE, f"{prefix}phrase_bias[{index}].bias", bias)
        if spec.seed is not None and spec.seed > limits.max_seed:
            raise InvalidArgument(f"{prefix}seed", spec.seed, f"must be within [0, {limits.max_seed}]")
        if not 0 <= spec.top_probabilities <= MAX_TOP_PROBABILITIES:
            raise InvalidArgument(f"{prefix}top_probabilities", spec.top_probabilities,
                                  f"must be within [0, {MAX_TOP_PROBABILITIES}]")
        return cls(
            sampling=sampling,
            max_new_tokens=max_new,
            min_new_tokens=spec.min_new_tokens,
            stop_sequences=stops,
            banned_strings=banned,
            logit_bias=tuple(spec.logit_bias),
            phrase_bias=tuple(zip(phrases, (bias for _, bias in spec.phrase_bias))),
            seed=spec.seed,
            top_probabilities=spec.top_probabilities,
        )

    def check_against_vocab(self, vocab_size: int, prefix: str = "spec.") -> None:
        for index, (token, _) in enumerate(self.logit_bias):
            if token >= vocab_size:
                raise InvalidArgument(f"{prefix}logit_bias[{index}].token_id", token,
                                      f"must be below the vocabulary size {vocab_size}")
        for index, token in enumerate(self.sampling.repetition_penalty_whitelist):
            if token >= vocab_size:
                raise InvalidArgument(f"{prefix}sampling.repetition_penalty_whitelist[{index}]", token,
                                      f"must be below the vocabulary size {vocab_size}")
        if self.sampling.top_k > vocab_size:
            raise InvalidArgument(f"{prefix}sampling.top_k", self.sampling.top_k,
                                  f"must not exceed the vocabulary size {vocab_size}")


def _check_strings(values: Sequence[str], field_name: str, limits: Limits, item_field: str = "") -> tuple[str, ...]:
    if len(values) > limits.max_strings:
        raise InvalidArgument(field_name, len(values), f"at most {limits.max_strings} entries")
    for index, value in enumerate(values):
        where = f"{field_name}[{index}]" + (f".{item_field}" if item_field else "")
        if not value:
            raise InvalidArgument(where, value, "must not be empty")
        if len(value) > limits.max_string_chars:
            raise InvalidArgument(where, value, f"at most {limits.max_string_chars} characters")
    return tuple(values)

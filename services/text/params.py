"""A generation request as the domain sees it: resolved against a preset, validated field by field.

`GenerationParams.from_pb` converts and validates in one pass (every error names the request
field and its value), before any model work. Checks that need the model (token ids within the
vocabulary) are in `check_against_vocab`, run once the model is known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import IntEnum
from typing import Any

import torch

from fabula.text.v1 import text_pb2
from services.toolkit.errors import InvalidArgument


class SamplerName(IntEnum):
    """The orderable warpers; values are the protobuf enum's."""

    TEMPERATURE = text_pb2.SAMPLER_TEMPERATURE
    TOP_K = text_pb2.SAMPLER_TOP_K
    TOP_P = text_pb2.SAMPLER_TOP_P
    TOP_A = text_pb2.SAMPLER_TOP_A
    TYPICAL_P = text_pb2.SAMPLER_TYPICAL_P
    TAIL_FREE = text_pb2.SAMPLER_TAIL_FREE
    MIN_P = text_pb2.SAMPLER_MIN_P

    @property
    def key(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int, field_name: str) -> SamplerName:
        try:
            if isinstance(value, str):
                return cls[value.upper().removeprefix("SAMPLER_")]
            return cls(value)
        except (KeyError, ValueError):
            names = ", ".join(name.key for name in cls)
            raise InvalidArgument(field_name, value, f"unknown sampler; one of {names}") from None


# KoboldCpp's default order: temperature first, then the truncations from coarse to fine.
DEFAULT_ORDER: tuple[tuple[SamplerName, bool], ...] = tuple((name, True) for name in (
    SamplerName.TEMPERATURE, SamplerName.TOP_K, SamplerName.TOP_A, SamplerName.TOP_P,
    SamplerName.TYPICAL_P, SamplerName.TAIL_FREE, SamplerName.MIN_P))


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric sampling field; `low_open`/`high_open` exclude the bound."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def check(self, field_name: str, value: Any) -> None:
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(field_name, value, "must be an integer")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgument(field_name, value, "must be a finite number")
        below = value <= self.low if self.low_open else value < self.low
        above = value >= self.high if self.high_open else value > self.high
        if below or above:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            raise InvalidArgument(field_name, value, f"must be within {left}{self.low:g}, {self.high:g}{right}")


# Each numeric sampling field: its neutral value (the control is off) and its allowed range.
NUMERIC_FIELDS: dict[str, tuple[float, Range]] = {
    "temperature": (1.0, Range(0, 100)),
    "top_k": (0, Range(0, 1 << 20, integer=True)),
    "top_p": (1.0, Range(0, 1, low_open=True)),
    "top_a": (0.0, Range(0, 1)),
    "typical_p": (1.0, Range(0, 1, low_open=True)),
    "tail_free": (1.0, Range(0, 1, low_open=True)),
    "min_p": (0.0, Range(0, 1)),
    "repetition_penalty": (1.0, Range(0, 10, low_open=True)),
    "repetition_penalty_range": (0, Range(0, 1 << 20, integer=True)),
    "repetition_penalty_slope": (0.0, Range(0, 10)),
    "frequency_penalty": (0.0, Range(-2, 2)),
    "presence_penalty": (0.0, Range(-2, 2)),
}

BIAS_RANGE = Range(-100, 100)


@dataclass(frozen=True)
class SamplingParams:
    """Resolved sampling controls (neutral values where the control is off)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    top_a: float = 0.0
    typical_p: float = 1.0
    tail_free: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_penalty_range: int = 0
    repetition_penalty_slope: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty_whitelist: tuple[int, ...] = ()
    order: tuple[tuple[SamplerName, bool], ...] = DEFAULT_ORDER
    whitelist_tensor: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.repetition_penalty_whitelist and self.whitelist_tensor is None:
            object.__setattr__(self, "whitelist_tensor",
                               torch.tensor(self.repetition_penalty_whitelist, dtype=torch.long))

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1 or self.frequency_penalty != 0 or self.presence_penalty != 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], field_prefix: str,
                     base: SamplingParams | None = None) -> SamplingParams:
        """Validate a plain mapping (a preset file, or a request converted to one) over `base`."""
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
            if name in NUMERIC_FIELDS:
                NUMERIC_FIELDS[name][1].check(where, value)
                resolved[name] = value
            elif name == "repetition_penalty_whitelist":
                ids = tuple(value)
                for index, token in enumerate(ids):
                    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                        raise InvalidArgument(f"{where}[{index}]", token, "must be a token id (integer >= 0)")
                resolved[name] = ids
            elif name == "sampler_order":
                resolved["order"] = parse_order(value, where)
        return replace(base, **resolved, whitelist_tensor=None)

    @classmethod
    def from_pb(cls, message: text_pb2.SamplingParameters, field_prefix: str,
                base: SamplingParams | None = None) -> SamplingParams:
        values: dict[str, Any] = {}
        for name in NUMERIC_FIELDS:
            if message.HasField(name):
                values[name] = getattr(message, name)
        if message.repetition_penalty_whitelist:
            values["repetition_penalty_whitelist"] = list(message.repetition_penalty_whitelist)
        if message.sampler_order:
            values["sampler_order"] = [
                {"sampler": step.sampler, "enabled": step.enabled if step.HasField("enabled") else True}
                for step in message.sampler_order
            ]
        return cls.from_mapping(values, field_prefix, base)

    def to_pb(self) -> text_pb2.SamplingParameters:
        message = text_pb2.SamplingParameters(
            repetition_penalty_whitelist=list(self.repetition_penalty_whitelist),
            sampler_order=[text_pb2.SamplerStep(sampler=int(name), enabled=enabled)
                           for name, enabled in self.order],
        )
        for name in NUMERIC_FIELDS:
            setattr(message, name, getattr(self, name))
        return message

    def to_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in NUMERIC_FIELDS}
        values["repetition_penalty_whitelist"] = list(self.repetition_penalty_whitelist)
        values["sampler_order"] = [{"sampler": name.key, "enabled": enabled} for name, enabled in self.order]
        return values


def parse_order(steps: Sequence[Any], field_name: str) -> tuple[tuple[SamplerName, bool], ...]:
    """A full permutation of the warpers, each once, each enabled or not."""
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
    missing = [name.key for name in SamplerName if name not in seen]
    if missing:
        raise InvalidArgument(field_name, [s.key for s, _ in order],
                              f"must name every sampler exactly once; missing {', '.join(missing)}")
    return tuple(order)


@dataclass(frozen=True)
class Limits:
    """Bounds a request must stay within (from the service's settings)."""

    max_new_tokens: int = 1024
    max_prompt_chars: int = 200_000
    max_strings: int = 64  # stop sequences, banned strings, phrase biases, each
    max_string_chars: int = 256
    max_logit_biases: int = 1024
    max_seed: int = (1 << 63) - 1


DEFAULT_MAX_NEW_TOKENS = 40


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

    @classmethod
    def from_pb(cls, spec: text_pb2.GenerationSpec, base_sampling: SamplingParams, limits: Limits,
                prefix: str = "spec.") -> GenerationParams:
        sampling = SamplingParams.from_pb(spec.sampling, f"{prefix}sampling.", base_sampling)
        max_new = spec.max_new_tokens if spec.HasField("max_new_tokens") else DEFAULT_MAX_NEW_TOKENS
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
        for index, entry in enumerate(spec.logit_bias):
            BIAS_RANGE.check(f"{prefix}logit_bias[{index}].bias", entry.bias)
        phrases = _check_strings([entry.phrase for entry in spec.phrase_bias], f"{prefix}phrase_bias", limits,
                                 item_field="phrase")
        for index, entry in enumerate(spec.phrase_bias):
            BIAS_RANGE.check(f"{prefix}phrase_bias[{index}].bias", entry.bias)
        if spec.HasField("seed") and spec.seed > limits.max_seed:
            raise InvalidArgument(f"{prefix}seed", spec.seed, f"must be within [0, {limits.max_seed}]")
        return cls(
            sampling=sampling,
            max_new_tokens=max_new,
            min_new_tokens=spec.min_new_tokens,
            stop_sequences=stops,
            banned_strings=banned,
            logit_bias=tuple((entry.token_id, entry.bias) for entry in spec.logit_bias),
            phrase_bias=tuple(zip(phrases, (entry.bias for entry in spec.phrase_bias))),
            seed=spec.seed if spec.HasField("seed") else None,
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

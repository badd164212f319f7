"""Sampler settings: `Sampling` (every control of the text service's `SamplingParameters`, under
its names), the sampler order, and the `Preset`, a user's named settings stored as a standalone
`presets` object:

    presets/<id>   {"format": "fabula-preset", "version": 2, "name": "...", "description": "",
                    "text_model": "", "sampling": {...}, "sampler_order": [{"sampler": "top_p",
                    "enabled": true}, ...], "max_new_tokens": null, "min_new_tokens": 0}

A control that is `null` is not set: the preset leaves it to the service's neutral value (or, in a
story's overrides, to the preset). `sampler_order` empty means the service's default order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from fabula_sdk.documents import codec

FORMAT = "fabula-preset"
VERSION = 2


class SamplerName(enum.StrEnum):
    """The orderable samplers, as the text service names them."""

    TEMPERATURE = "temperature"
    TOP_K = "top_k"
    TOP_P = "top_p"
    TOP_A = "top_a"
    TYPICAL_P = "typical_p"
    TAIL_FREE = "tail_free"
    MIN_P = "min_p"
    REPETITION_PENALTY = "repetition_penalty"
    PHRASE_REPETITION_PENALTY = "phrase_repetition_penalty"
    DRY = "dry"
    XTC = "xtc"
    UNIFIED = "unified"
    MIROSTAT = "mirostat"


# The seven warpers an order must name; the service puts a newer step an order leaves out at its
# default place (a penalty first, the others last), enabled.
CLASSIC_SAMPLERS = (SamplerName.TEMPERATURE, SamplerName.TOP_K, SamplerName.TOP_P, SamplerName.TOP_A,
                    SamplerName.TYPICAL_P, SamplerName.TAIL_FREE, SamplerName.MIN_P)


@dataclass
class SamplerStep:
    sampler: SamplerName
    enabled: bool = True
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


def complete_sampler_order(steps: list[SamplerStep]) -> list[SamplerStep]:
    """`steps` followed by every classic warper they leave out, disabled: the text service takes an
    order only when it names each of them once (NovelAI's files and a user's short list name fewer)."""
    named = {step.sampler for step in steps}
    return list(steps) + [SamplerStep(sampler, enabled=False) for sampler in CLASSIC_SAMPLERS if sampler not in named]


@dataclass
class Sampling:
    """The numeric sampling controls (ranges and meanings: the text service's docs/text.md). The
    newer samplers' fields (mirostat, cfg_scale, dry_*, xtc_*, unified_*, ...) are kept in `extra`
    under their request names and sent as they are: adding them here would change how existing
    documents encode (format version 2)."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    top_a: float | None = None
    typical_p: float | None = None
    tail_free: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    repetition_penalty_range: int | None = None
    repetition_penalty_slope: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty_whitelist: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def merged_over(self, base: Sampling) -> Sampling:
        """These settings where set, `base`'s elsewhere (a story's overrides over its preset)."""
        merged = codec.encode(base)
        merged.update({key: value for key, value in codec.encode(self).items() if value is not None})
        return codec.decode(Sampling, merged, "sampling")

    def set_values(self) -> dict[str, Any]:
        """The controls that are set, as the text service's request names them."""
        return {key: value for key, value in codec.encode(self).items() if value is not None}


@dataclass
class Preset:
    name: str
    description: str = ""
    text_model: str = ""  # the model it was made for; "" = any
    sampling: Sampling = field(default_factory=Sampling)
    sampler_order: list[SamplerStep] = field(default_factory=list)
    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return codec.write_document(self, FORMAT)

    @classmethod
    def from_json(cls, data: dict[str, Any], what: str = "preset") -> Preset:
        return codec.read_document(cls, data, FORMAT, VERSION, what)

    def to_bytes(self) -> bytes:
        return codec.dumps(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "preset") -> Preset:
        return cls.from_json(codec.loads(data, what), what)

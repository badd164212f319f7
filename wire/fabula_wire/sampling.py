"""The values the text service accepts for a generation request's numeric controls, written once:
the service validates against them (`services.text.params`) and the gateway states them in its
bodies and its OpenAPI document (`gateway.schemas.text`), so the two cannot drift apart.

Only the numbers live here; what each control does, its neutral value and how it is refused are
the text service's (`SamplingParams`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric control; `low_open`/`high_open` exclude the bound;
    `min_above_low` refuses values above `low` but below it (a divisor too small to divide by)."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    min_above_low: float = 0.0

    def problem(self, value: Any) -> str | None:
        """Why `value` is refused, or None when it is allowed."""
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int):
                return "must be an integer"
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "must be a finite number"
        below = value <= self.low if self.low_open else value < self.low
        above = value >= self.high if self.high_open else value > self.high
        if below or above:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"must be within {left}{self.low:g}, {self.high:g}{right}"
        # Only a range that declares such a floor has one (a range reaching below 0, such as the
        # presence penalty's, must accept its negative values).
        if self.min_above_low and self.low < value < self.min_above_low:
            return f"must be {self.low:g} or at least {self.min_above_low:g}"
        return None

    def json_schema(self) -> dict[str, Any]:
        """The same constraint in JSON Schema (OpenAPI 3.1)."""
        schema: dict[str, Any] = {"type": "integer" if self.integer else "number"}
        schema["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        schema["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        if self.min_above_low and self.min_above_low > self.low:
            upper = {"exclusiveMaximum" if self.high_open else "maximum": self.high}
            return {"anyOf": [{"type": schema["type"], "const": self.low},
                              {"type": schema["type"], "minimum": self.min_above_low, **upper}]}
        return schema


MAX_TOKEN_COUNT = 1 << 20

# Dividing float32 logits by a temperature near float32's smallest values overflows them. The
# floor is a power of two so that protobuf's 32-bit float carries it exactly: a bound that
# rounds on the way (1e-6 arrives as 9.99999997e-7) would refuse the value it names.
TEMPERATURE_RANGE = Range(0, 100, min_above_low=2.0**-20)

# The request's numeric sampling fields, by their request names.
SAMPLING_RANGES: dict[str, Range] = {
    "temperature": TEMPERATURE_RANGE,
    "top_k": Range(0, MAX_TOKEN_COUNT, integer=True),
    "top_p": Range(0, 1, low_open=True),
    "top_a": Range(0, 1),
    "typical_p": Range(0, 1, low_open=True),
    "tail_free": Range(0, 1, low_open=True),
    "min_p": Range(0, 1),
    "repetition_penalty": Range(0, 10, low_open=True),
    "repetition_penalty_range": Range(0, MAX_TOKEN_COUNT, integer=True),
    "repetition_penalty_slope": Range(0, 10),
    "frequency_penalty": Range(-2, 2),
    "presence_penalty": Range(-2, 2),
    "dry_multiplier": Range(0, 100),
    "dry_base": Range(1, 10, low_open=True),
    "dry_allowed_length": Range(1, 1000, integer=True),
    "dry_penalty_last_n": Range(0, MAX_TOKEN_COUNT, integer=True),
    "xtc_threshold": Range(0, 1),
    "xtc_probability": Range(0, 1),
    "unified_linear": Range(0, 10),
    "unified_quad": Range(0, 10),
    "unified_conf": Range(-10, 10),
    "mirostat": Range(0, 2, integer=True),
    "mirostat_tau": Range(0, 100),
    "mirostat_eta": Range(0, 1),
    "cfg_scale": Range(0, 100),
}

# A logit bias or a phrase bias.
BIAS_RANGE = Range(-100, 100)

# The most alternatives a request may ask to see per generated token (OpenAI's top_logprobs cap).
MAX_TOP_PROBABILITIES = 20

# Stop sequences, banned strings and phrase biases: at most this many of each, each a non-empty
# string of at most this many characters.
MAX_STRINGS = 64
MAX_STRING_CHARS = 256
MAX_LOGIT_BIASES = 1024

# The largest seed a generation takes (the samplers' generator is seeded with a signed 64-bit value).
MAX_SEED = (1 << 63) - 1

# DRY's sequence breakers: at most this many, each a non-empty string of at most this many characters.
MAX_DRY_BREAKERS = 32
MAX_DRY_BREAKER_CHARS = 64
# The negative context of classifier-free guidance (cfg_uc), in characters.
MAX_CFG_UC_CHARS = 50_000

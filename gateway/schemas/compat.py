"""What the compatible APIs (OpenAI, KoboldAI) share on their way to the text service: lenient
bodies, the sampling fields by Fabula's names, and the finish reasons they report.

Their clients send numbers loosely (an integer where a float is meant, a float for a count), so
these bodies are not strict; the text service still checks the meaning of every value and names
the field. A compatible request starts from the "neutral" preset (every sampler off, temperature
1), as the peers do: a field the client leaves out is off, never a Fabula preset's choice,
unless the client names a `preset` itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from fabula.text.v1 import text_pb2

NEUTRAL_PRESET = "neutral"

# Fabula's default warper order, the one a client's partial order is completed with.
DEFAULT_ORDER = ("temperature", "top_k", "top_a", "top_p", "typical_p", "tail_free", "min_p")

SAMPLING_NAMES = ("temperature", "top_k", "top_p", "top_a", "typical_p", "tail_free", "min_p",
                  "repetition_penalty", "repetition_penalty_range", "repetition_penalty_slope",
                  "frequency_penalty", "presence_penalty", "mirostat", "mirostat_tau", "mirostat_eta",
                  "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n", "xtc_threshold",
                  "xtc_probability")


class CompatBody(BaseModel):
    """Lenient about number types, ignores fields it does not know (clients send many)."""

    model_config = ConfigDict(extra="ignore")


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

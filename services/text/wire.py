"""Every translation between `fabula.text.v1` messages and the text service's domain types.

Plain functions, `x_from_pb(message)` and `x_to_pb(value)`. Translation only: validation (and the
error that names a request field) happens in the domain, so a value the domain does not know (a
sampler number from a newer client) passes through as it is and is refused there by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fabula.text.v1 import text_pb2
from services.text.context import BuiltContext, ReportEntry
from services.text.context_units import TextUnit, TrimDirection
from services.text.models import LoadedModel
from services.text.params import (SAMPLING_FIELDS, GenerationSpec, PhraseRepetitionPenalty, SamplerConvention,
                                  SamplerName, SamplingParams)
from services.text.presets_store import Preset
from services.text.probabilities import Alternative, TokenProbabilities
from services.text.sequence import FinishReason, Piece, Stats
from services.text.story_context import ContextConfig, LoreCategory, LoreEntry, StoryContext

SAMPLER_FROM_PB: dict[int, SamplerName] = {
    text_pb2.SAMPLER_TEMPERATURE: SamplerName.TEMPERATURE,
    text_pb2.SAMPLER_TOP_K: SamplerName.TOP_K,
    text_pb2.SAMPLER_TOP_P: SamplerName.TOP_P,
    text_pb2.SAMPLER_TOP_A: SamplerName.TOP_A,
    text_pb2.SAMPLER_TYPICAL_P: SamplerName.TYPICAL_P,
    text_pb2.SAMPLER_TAIL_FREE: SamplerName.TAIL_FREE,
    text_pb2.SAMPLER_MIN_P: SamplerName.MIN_P,
    text_pb2.SAMPLER_REPETITION_PENALTY: SamplerName.REPETITION_PENALTY,
    text_pb2.SAMPLER_PHRASE_REPETITION_PENALTY: SamplerName.PHRASE_REPETITION_PENALTY,
    text_pb2.SAMPLER_DRY: SamplerName.DRY,
    text_pb2.SAMPLER_XTC: SamplerName.XTC,
    text_pb2.SAMPLER_UNIFIED: SamplerName.UNIFIED,
    text_pb2.SAMPLER_MIROSTAT: SamplerName.MIROSTAT,
}
SAMPLER_TO_PB: dict[SamplerName, int] = {name: number for number, name in SAMPLER_FROM_PB.items()}

TRIM_DIRECTION_FROM_PB: dict[int, TrimDirection] = {
    text_pb2.TRIM_DIRECTION_TOP: TrimDirection.TOP,
    text_pb2.TRIM_DIRECTION_BOTTOM: TrimDirection.BOTTOM,
    text_pb2.TRIM_DIRECTION_NONE: TrimDirection.NONE,
}
TRIM_TYPE_FROM_PB: dict[int, TextUnit] = {
    text_pb2.TRIM_TYPE_NEWLINE: TextUnit.NEWLINE,
    text_pb2.TRIM_TYPE_SENTENCE: TextUnit.SENTENCE,
    text_pb2.TRIM_TYPE_TOKEN: TextUnit.TOKEN,
}
INSERTION_TYPE_FROM_PB: dict[int, TextUnit] = {
    text_pb2.INSERTION_TYPE_NEWLINE: TextUnit.NEWLINE,
    text_pb2.INSERTION_TYPE_SENTENCE: TextUnit.SENTENCE,
    text_pb2.INSERTION_TYPE_TOKEN: TextUnit.TOKEN,
}

CONVENTION_FROM_PB: dict[int, SamplerConvention] = {
    text_pb2.SAMPLER_CONVENTION_FABULA: SamplerConvention.FABULA,
    text_pb2.SAMPLER_CONVENTION_KOBOLDCPP: SamplerConvention.KOBOLDCPP,
}
CONVENTION_TO_PB: dict[SamplerConvention, int] = {name: number for number, name in CONVENTION_FROM_PB.items()}

PHRASE_LEVEL_FROM_PB: dict[int, PhraseRepetitionPenalty] = {
    text_pb2.PHRASE_REPETITION_PENALTY_OFF: PhraseRepetitionPenalty.OFF,
    text_pb2.PHRASE_REPETITION_PENALTY_VERY_LIGHT: PhraseRepetitionPenalty.VERY_LIGHT,
    text_pb2.PHRASE_REPETITION_PENALTY_LIGHT: PhraseRepetitionPenalty.LIGHT,
    text_pb2.PHRASE_REPETITION_PENALTY_MEDIUM: PhraseRepetitionPenalty.MEDIUM,
    text_pb2.PHRASE_REPETITION_PENALTY_AGGRESSIVE: PhraseRepetitionPenalty.AGGRESSIVE,
    text_pb2.PHRASE_REPETITION_PENALTY_VERY_AGGRESSIVE: PhraseRepetitionPenalty.VERY_AGGRESSIVE,
}
PHRASE_LEVEL_TO_PB: dict[PhraseRepetitionPenalty, int] = {name: number for number, name in PHRASE_LEVEL_FROM_PB.items()}
# The enum-valued controls: the table from protobuf numbers (UNSPECIFIED, 0, counts as unset).
_CHOICES_FROM_PB: dict[str, dict[int, Any]] = {"sampler_convention": CONVENTION_FROM_PB,
                                               "phrase_repetition_penalty": PHRASE_LEVEL_FROM_PB}

FINISH_REASON_TO_PB: dict[FinishReason, int] = {
    FinishReason.LENGTH: text_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: text_pb2.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.END_OF_TEXT: text_pb2.FINISH_REASON_END_OF_TEXT,
    FinishReason.CANCELLED: text_pb2.FINISH_REASON_CANCELLED,
}


# --- requests ----------------------------------------------------------------------------------


def sampling_from_pb(message: text_pb2.SamplingParameters) -> dict[str, Any]:
    """The sampling fields the request set, by their request names (unset ones are left to the
    preset). The message's optional fields carry the names of `SAMPLING_FIELDS`; the convention
    is an enum number, and UNSPECIFIED counts as unset."""
    values: dict[str, Any] = {name: getattr(message, name) for name in SAMPLING_FIELDS if message.HasField(name)}
    for name, table in _CHOICES_FROM_PB.items():
        if name in values:
            number = values.pop(name)
            if number != 0:
                values[name] = table.get(number, number)
    if message.HasField("cfg_uc"):
        values["cfg_uc"] = message.cfg_uc
    if message.HasField("dry_sequence_breakers"):
        values["dry_sequence_breakers"] = list(message.dry_sequence_breakers.breakers)
    if message.repetition_penalty_whitelist:
        values["repetition_penalty_whitelist"] = list(message.repetition_penalty_whitelist)
    if message.sampler_order:
        values["sampler_order"] = [
            {"sampler": SAMPLER_FROM_PB.get(step.sampler, step.sampler),
             "enabled": step.enabled if step.HasField("enabled") else True}
            for step in message.sampler_order
        ]
    return values


def context_config_from_pb(message: text_pb2.ContextConfig) -> ContextConfig:
    """The fields the message set (unset scalars and UNSPECIFIED enums stay None: the part's
    default). An enum number this service does not know passes through for the domain to refuse."""
    def optional(name: str):
        return getattr(message, name) if message.HasField(name) else None

    def enum(name: str, table: dict[int, Any]):
        number = getattr(message, name)
        return None if number == 0 else table.get(number, number)

    return ContextConfig(
        prefix=optional("prefix"), suffix=optional("suffix"), token_budget=optional("token_budget"),
        reserved_tokens=optional("reserved_tokens"), budget_priority=optional("budget_priority"),
        trim_direction=enum("trim_direction", TRIM_DIRECTION_FROM_PB),
        maximum_trim_type=enum("maximum_trim_type", TRIM_TYPE_FROM_PB),
        insertion_type=enum("insertion_type", INSERTION_TYPE_FROM_PB),
        insertion_position=optional("insertion_position"))


def lore_entry_from_pb(message: text_pb2.LorebookEntry) -> LoreEntry:
    return LoreEntry(
        name=message.name, text=message.text, keys=tuple(message.keys), regex_keys=message.regex_keys,
        case_sensitive=message.case_sensitive, scan_depth_chars=message.scan_depth_chars,
        always_on=message.always_on, insertion_order=message.insertion_order,
        insertion_position=message.insertion_position, token_budget=message.token_budget,
        disabled=message.disabled, id=message.id, key_relative=message.key_relative,
        cascading_activation=message.cascading_activation, category=message.category,
        context_config=context_config_from_pb(message.context_config) if message.HasField("context_config") else None)


def lore_category_from_pb(message: text_pb2.LorebookCategory) -> LoreCategory:
    return LoreCategory(
        id=message.id, name=message.name, enabled=message.enabled if message.HasField("enabled") else True,
        create_subcontext=message.create_subcontext,
        subcontext_config=context_config_from_pb(message.subcontext_config),
        use_category_defaults=message.use_category_defaults,
        category_defaults=lore_entry_from_pb(message.category_defaults)
        if message.HasField("category_defaults") else None)


def story_context_from_pb(message: text_pb2.StoryContext) -> StoryContext:
    """The story parts, unchecked (`context.check_inputs` checks them)."""
    depth = {"authors_note_depth": message.authors_note_depth} if message.HasField("authors_note_depth") else {}
    return StoryContext(
        story=message.story, memory=message.memory, authors_note=message.authors_note, **depth,
        lorebook=tuple(lore_entry_from_pb(entry) for entry in message.lorebook),
        max_context_tokens=message.max_context_tokens,
        memory_config=context_config_from_pb(message.memory_config),
        authors_note_config=context_config_from_pb(message.authors_note_config),
        story_config=context_config_from_pb(message.story_config),
        lorebook_categories=tuple(lore_category_from_pb(category) for category in message.lorebook_categories))


def spec_from_pb(message: text_pb2.GenerationSpec) -> GenerationSpec:
    return GenerationSpec(
        model=message.model,
        prompt=message.prompt,
        context=story_context_from_pb(message.context) if message.WhichOneof("input") == "context" else None,
        preset=message.preset,
        sampling=sampling_from_pb(message.sampling),
        max_new_tokens=message.max_new_tokens if message.HasField("max_new_tokens") else None,
        min_new_tokens=message.min_new_tokens,
        stop_sequences=tuple(message.stop_sequences),
        banned_strings=tuple(message.banned_strings),
        logit_bias=tuple((entry.token_id, entry.bias) for entry in message.logit_bias),
        phrase_bias=tuple((entry.phrase, entry.bias) for entry in message.phrase_bias),
        seed=message.seed if message.HasField("seed") else None,
        top_probabilities=message.top_probabilities,
    )


# --- results -----------------------------------------------------------------------------------


def sampling_to_pb(sampling: SamplingParams) -> text_pb2.SamplingParameters:
    message = text_pb2.SamplingParameters(
        repetition_penalty_whitelist=list(sampling.repetition_penalty_whitelist),
        sampler_order=[text_pb2.SamplerStep(sampler=SAMPLER_TO_PB[name], enabled=enabled)
                       for name, enabled in sampling.order],
    )
    for name in SAMPLING_FIELDS:
        value = getattr(sampling, name)
        if isinstance(value, SamplerConvention):
            value = CONVENTION_TO_PB[value]
        elif isinstance(value, PhraseRepetitionPenalty):
            value = PHRASE_LEVEL_TO_PB[value]
        setattr(message, name, value)
    message.cfg_uc = sampling.cfg_uc
    message.dry_sequence_breakers.SetInParent()
    message.dry_sequence_breakers.breakers.extend(sampling.dry_sequence_breakers)
    return message


def preset_to_pb(preset: Preset) -> text_pb2.Preset:
    return text_pb2.Preset(name=preset.name, description=preset.description,
                           sampling=sampling_to_pb(preset.sampling))


def model_info_to_pb(model: LoadedModel, is_default: bool) -> text_pb2.ModelInfo:
    return text_pb2.ModelInfo(name=model.name, source=model.source, context_window=model.context_window,
                              vocab_size=model.vocab_size, dtype=model.weights, device=str(model.device),
                              is_default=is_default, architecture=model.architecture)


def report_entry_to_pb(entry: ReportEntry) -> text_pb2.ContextReportEntry:
    return text_pb2.ContextReportEntry(source=entry.source, included=entry.included, reason=entry.reason,
                                       tokens=entry.tokens, trimmed_tokens=entry.trimmed_tokens)


def context_report_to_pb(built: BuiltContext) -> text_pb2.ContextReport:
    return text_pb2.ContextReport(entries=[report_entry_to_pb(entry) for entry in built.entries],
                                  prompt_tokens=len(built.prompt_ids), budget_tokens=built.budget,
                                  prompt=built.prompt)


def alternative_to_pb(alternative: Alternative) -> text_pb2.TokenAlternative:
    return text_pb2.TokenAlternative(token_id=alternative.token_id, text=alternative.text,
                                     logprob=alternative.logprob, token_bytes=alternative.token_bytes)


def token_probabilities_to_pb(probs: TokenProbabilities) -> text_pb2.TokenProbabilities:
    return text_pb2.TokenProbabilities(
        token_id=probs.token_id, logprob_before=probs.logprob_before, logprob_after=probs.logprob_after,
        before=[alternative_to_pb(a) for a in probs.before], after=[alternative_to_pb(a) for a in probs.after],
        text=probs.text, token_bytes=probs.token_bytes)


def piece_to_pb(piece: Piece) -> text_pb2.TextPiece:
    return text_pb2.TextPiece(text=piece.text, token_ids=piece.token_ids,
                              probabilities=[token_probabilities_to_pb(p) for p in piece.probabilities])


def stats_to_pb(stats: Stats) -> text_pb2.GenerationStats:
    return text_pb2.GenerationStats(
        finish_reason=FINISH_REASON_TO_PB[stats.finish_reason], prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens, seed=stats.seed,
        time_to_first_token_ms=stats.time_to_first_token_ms, total_ms=stats.total_ms,
        queue_ms=stats.queue_ms, tokens_per_second=stats.tokens_per_second,
        stop_sequence=stats.stop_sequence, model=stats.model,
        cached_prompt_tokens=stats.cached_prompt_tokens)



def chat_messages_from_pb(messages: Iterable[text_pb2.ChatMessage]) -> list[tuple[str, str]]:
    """A conversation as (role, content) turns, oldest first."""
    return [(message.role, message.content) for message in messages]

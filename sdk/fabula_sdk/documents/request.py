"""A generation request from a story's documents: the JSON body of the gateway's
`POST /ai/generate` (and its streamed form), i.e. the SDK `TextClient.generate(**body)` options.

The story's memory, author's note, context configs, and every entry and category of its
lorebooks go into `context` under their own names (the document and the text service share
them); sampling is the preset's controls with the story's overrides on top, the sampler order
the story's, else the preset's. Fields a document holds but the service does not know (kept by
the unknown-field rule) are left out of the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fabula_sdk.documents import codec
from fabula_sdk.documents.context import ContextConfig
from fabula_sdk.documents.lorebook import Lorebook, LorebookCategory, LorebookEntry
from fabula_sdk.documents.preset import Preset, Sampling
from fabula_sdk.documents.story import Story


def _known(value: Any) -> Any:
    """JSON of a document value without the fields kept only for other clients."""
    data = codec.encode(value)
    return _strip(data, value)


def _strip(data: Any, value: Any) -> Any:
    extra = getattr(value, "extra", None)
    if isinstance(data, dict) and extra:
        data = {key: item for key, item in data.items() if key not in extra}
    if isinstance(data, dict):
        return {key: _strip(item, getattr(value, key, None)) for key, item in data.items()}
    if isinstance(data, list) and isinstance(value, list):
        return [_strip(item, inner) for item, inner in zip(data, value, strict=True)]
    return data


def context_config(config: ContextConfig) -> dict[str, Any]:
    return _known(config)


def lorebook_entry(entry: LorebookEntry) -> dict[str, Any]:
    return _known(entry)


def lorebook_category(category: LorebookCategory) -> dict[str, Any]:
    return _known(category)


def story_context(story: Story, text: str, lorebooks: Sequence[Lorebook] = (), *,
                  max_context_tokens: int = 0) -> dict[str, Any]:
    """The request's `context`: `text` is the story text (the history's text at the head)."""
    return {
        "story": text,
        "memory": story.memory.text,
        "authors_note": story.authors_note.text,
        "memory_config": context_config(story.memory.context_config),
        "authors_note_config": context_config(story.authors_note.context_config),
        "story_config": context_config(story.story_config),
        "lorebook": [lorebook_entry(entry) for book in lorebooks for entry in book.entries],
        "lorebook_categories": [lorebook_category(category) for book in lorebooks for category in book.categories],
        "max_context_tokens": max_context_tokens,
    }


def generation_request(story: Story, text: str, lorebooks: Sequence[Lorebook] = (), preset: Preset | None = None, *,
                       max_context_tokens: int = 0, seed: int | None = None) -> dict[str, Any]:
    """The whole generation body for the story's next continuation."""
    settings = story.settings
    base = preset.sampling if preset is not None else Sampling()
    sampling = {key: value for key, value in _known(settings.sampling.merged_over(base)).items() if value is not None}
    order = settings.sampler_order or (preset.sampler_order if preset is not None else [])
    if order:
        sampling["sampler_order"] = [_known(step) for step in order]
    body: dict[str, Any] = {
        "model": settings.text_model or (preset.text_model if preset is not None else ""),
        "context": story_context(story, text, lorebooks, max_context_tokens=max_context_tokens),
        "preset": settings.service_preset,
        "sampling": sampling,
        "stop_sequences": list(settings.stop_sequences),
        "banned_strings": list(settings.banned_strings),
        "logit_bias": [_known(bias) for bias in settings.logit_bias],
        "phrase_bias": [_known(bias) for bias in settings.phrase_bias],
    }
    max_new = settings.max_new_tokens if settings.max_new_tokens is not None else (
        preset.max_new_tokens if preset is not None else None)
    min_new = settings.min_new_tokens if settings.min_new_tokens is not None else (
        preset.min_new_tokens if preset is not None else 0)
    if max_new is not None:
        body["max_new_tokens"] = max_new
    body["min_new_tokens"] = min_new
    if seed is not None:
        body["seed"] = seed
    return body

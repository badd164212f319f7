"""The story: the small `stories` object a library lists without opening the text.

    stories/<id>   {"format": "fabula-story", "version": 2, "title", "description", "tags",
                    "favorite", "created_at", "updated_at", "preview", "content_id", "lorebook_ids",
                    "history_segments", "memory", "authors_note", "story_config", "settings"}

It holds what describes the story (title, description, tags, favourite flag, times in RFC 3339
UTC, a preview of the text's opening), where the rest is (`content_id`, the `lorebook_ids` it
uses, `history_segments`: how many history segments are committed), and what a generation
request needs besides the text: memory and author's note (text + `ContextConfig`), the story's
own `ContextConfig`, and `StorySettings` (text model, preset reference, sampler overrides and
order, stop sequences, banned strings, biases, image defaults). Each save after a generation
rewrites this object under its change index, which is what makes two devices' saves of the same
story conflict.

Version 1 (`{"version": 1, "title", "content_id", "updated_at"}`, no "format") is read as a
version-2 story with those fields; `migrated_from` says so, and the first save writes it as
version 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fabula_sdk.documents import codec
from fabula_sdk.documents.context import ContextConfig, authors_note_config, memory_config, story_config
from fabula_sdk.documents.image import ImageSettings
from fabula_sdk.documents.preset import SamplerStep, Sampling

FORMAT = "fabula-story"
VERSION = 2
PREVIEW_CHARS = 280


def utc_now() -> str:
    """The current time as RFC 3339 UTC with a Z, millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ContextText:
    """Memory or the author's note: the text and where it goes in the context."""

    text: str = ""
    context_config: ContextConfig = field(default_factory=ContextConfig)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Memory(ContextText):
    context_config: ContextConfig = field(default_factory=memory_config)


@dataclass
class AuthorsNote(ContextText):
    context_config: ContextConfig = field(default_factory=authors_note_config)


@dataclass
class LogitBias:
    token_id: int
    bias: float
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class PhraseBias:
    phrase: str
    bias: float
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class StorySettings:
    """Per-story generation settings. The sampler controls in `sampling` override the preset's
    (null = the preset's value); `sampler_order` empty = the preset's order."""

    text_model: str = ""  # "" = the service's default model
    preset_id: str = ""  # a `presets` object of the user's; "" = none
    service_preset: str = ""  # a preset the text service names (GenerationSpec.preset); "" = none
    sampling: Sampling = field(default_factory=Sampling)
    sampler_order: list[SamplerStep] = field(default_factory=list)
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    stop_sequences: list[str] = field(default_factory=list)
    banned_strings: list[str] = field(default_factory=list)
    logit_bias: list[LogitBias] = field(default_factory=list)
    phrase_bias: list[PhraseBias] = field(default_factory=list)
    image: ImageSettings = field(default_factory=ImageSettings)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Story:
    content_id: str
    title: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    favorite: bool = False
    created_at: str = ""
    updated_at: str = ""
    preview: str = ""
    lorebook_ids: list[str] = field(default_factory=list)
    history_segments: int = 0  # committed segments; the next save writes segment number history_segments
    memory: Memory = field(default_factory=Memory)
    authors_note: AuthorsNote = field(default_factory=AuthorsNote)
    story_config: ContextConfig = field(default_factory=story_config)
    settings: StorySettings = field(default_factory=StorySettings)
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    # Not stored: the format version this story was read in when it was older (1), else None.
    migrated_from: int | None = field(default=None, compare=False, repr=False, metadata={"stored": False})

    def to_json(self) -> dict[str, Any]:
        return codec.write_document(self, FORMAT)

    @classmethod
    def from_json(cls, data: dict[str, Any], what: str = "story") -> Story:
        if "format" not in data and data.get("version") == 1:
            return _from_version_1(data, what)
        return codec.read_document(cls, data, FORMAT, VERSION, what)

    def to_bytes(self) -> bytes:
        return codec.dumps(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "story") -> Story:
        return cls.from_json(codec.loads(data, what), what)

    def set_preview(self, text: str) -> None:
        self.preview = text[:PREVIEW_CHARS]


def _from_version_1(data: dict[str, Any], what: str) -> Story:
    for key in ("title", "content_id"):
        if not isinstance(data.get(key), str):
            raise codec.DocumentError(f"{what}.{key}: a version-1 story needs the text field {key!r}")
    updated = data.get("updated_at", "")
    updated = updated if isinstance(updated, str) else ""
    extra = {key: value for key, value in data.items() if key not in ("version", "title", "content_id", "updated_at")}
    return Story(content_id=data["content_id"], title=data["title"], created_at=updated, updated_at=updated,
                 extra=extra, migrated_from=1)

"""Importing the files writers already have: NovelAI `.lorebook` and `.scenario`, SillyTavern and
KoboldAI World Info (lorebooks), plain-text and Markdown stories.

    lorebook = read_lorebook(Path("dragons.lorebook").read_bytes(), "dragons.lorebook")
    stored = DocumentStore(client).create_lorebook(lorebook)

    story = read_story(data, "the-keep.scenario")        # a StoryImport: documents, nothing stored
    doc = store_story(DocumentStore(client), story)      # its lorebook, preset and story

Reading validates the whole file and builds every document before anything is stored; a bad or
hostile file (wrong types, huge entries, slow regular expressions, categories naming each
other, too many entries, deep nesting) raises `ImportRefused` naming the field by its JSON path.
`store_story` writes the lorebook, the preset and then the story, and deletes what it wrote if
a later write fails, so an import is stored whole or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from fabula_sdk.documents.content import Origin
from fabula_sdk.documents.context import ContextConfig, story_config
from fabula_sdk.documents.lorebook import Lorebook
from fabula_sdk.documents.preset import Preset
from fabula_sdk.documents.store import DocumentStore, StoryDocument
from fabula_sdk.documents.story import AuthorsNote, Memory, Story, StorySettings
from fabula_sdk.errors import FabulaError
from fabula_sdk.importers import novelai, text, worldinfo
from fabula_sdk.importers.checks import ImportRefused, load_json

__all__ = ["ImportRefused", "LOREBOOK_FORMATS", "STORY_FORMATS", "StoryImport", "lorebook_format", "read_lorebook",
           "read_story", "store_story", "story_format"]

LOREBOOK_FORMATS = ("novelai", "sillytavern", "koboldai", "fabula")
STORY_FORMATS = ("scenario", "markdown", "text")


@dataclass
class StoryImport:
    """A story read from a file, every document built and checked; nothing stored yet."""

    title: str
    text: str
    origin: Origin = Origin.PROMPT
    description: str = ""
    tags: list[str] = field(default_factory=list)
    memory: Memory = field(default_factory=Memory)
    authors_note: AuthorsNote = field(default_factory=AuthorsNote)
    story_config: ContextConfig = field(default_factory=story_config)
    settings: StorySettings = field(default_factory=StorySettings)
    lorebook: Lorebook | None = None
    preset: Preset | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def lorebook_format(data: Any, filename: str = "") -> str:
    """Which lorebook format parsed JSON `data` is in (ImportRefused if none)."""
    if isinstance(data, dict) and data.get("format") == "fabula-lorebook":
        return "fabula"
    if isinstance(data, dict) and ("lorebookVersion" in data or filename.endswith(".lorebook")):
        return "novelai"
    if worldinfo.is_sillytavern(data):
        return "sillytavern"
    if worldinfo.is_koboldai(data):
        return "koboldai"
    raise ImportRefused("", "not a lorebook this importer knows (NovelAI .lorebook, SillyTavern or KoboldAI World "
                            "Info JSON, Fabula lorebook JSON)")


def read_lorebook(data: bytes, filename: str = "", *, format: str | None = None, name: str = "") -> Lorebook:
    parsed = load_json(data, filename or "the file")
    format = format or lorebook_format(parsed, filename)
    name = name or PurePath(filename).stem
    if format == "novelai":
        return novelai.lorebook_from_json(parsed, name=name)
    if format == "sillytavern":
        return worldinfo.sillytavern_from_json(parsed, name=name)
    if format == "koboldai":
        return worldinfo.koboldai_from_json(parsed, name=name)
    if format == "fabula":
        from fabula_sdk.documents.codec import DocumentError

        try:
            return Lorebook.from_json(parsed, "lorebook")
        except DocumentError as error:
            raise ImportRefused("", str(error)) from None
    raise ImportRefused("", f"unknown lorebook format {format!r} (one of {', '.join(LOREBOOK_FORMATS)})")


def story_format(data: bytes, filename: str) -> str:
    suffix = PurePath(filename).suffix.lower()
    if suffix == ".scenario":
        return "scenario"
    if suffix in (".md", ".markdown"):
        return "markdown"
    if suffix in ("", ".txt", ".text"):
        return "text"
    if suffix == ".json":
        try:
            parsed = json.loads(data[:1_000_000].decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict) and "scenarioVersion" in parsed:
            return "scenario"
    raise ImportRefused("", f"cannot tell the story format of {filename!r}: name it .scenario, .md or .txt, "
                            f"or give the format ({', '.join(STORY_FORMATS)})")


def read_story(data: bytes, filename: str = "", *, format: str | None = None, title: str = "") -> StoryImport:
    format = format or story_format(data, filename)
    default_title = title or PurePath(filename).stem
    if format == "scenario":
        scenario = novelai.scenario_from_json(load_json(data, filename or "the file"))
        return StoryImport(title=title or scenario.title or default_title, text=scenario.prompt, origin=Origin.PROMPT,
                           description=scenario.description, tags=scenario.tags, memory=scenario.memory,
                           authors_note=scenario.authors_note, story_config=scenario.story_config,
                           settings=scenario.settings,
                           lorebook=scenario.lorebook if scenario.lorebook.entries or scenario.lorebook.categories
                           else None, preset=scenario.preset, extra={"novelai": scenario.extra} if scenario.extra
                           else {})
    if format == "markdown":
        read = text.markdown(data, title=title, what=filename or "the file")
        return StoryImport(title=read.title or default_title, text=read.text, origin=Origin.USER, tags=read.tags)
    if format == "text":
        read = text.plain_text(data, title=default_title, what=filename or "the file")
        return StoryImport(title=read.title, text=read.text, origin=Origin.USER)
    raise ImportRefused("", f"unknown story format {format!r} (one of {', '.join(STORY_FORMATS)})")


def store_story(store: DocumentStore, imported: StoryImport) -> StoryDocument:
    """Store the import's lorebook, preset and story; if any write fails, delete what was written."""
    written: list[tuple[str, str]] = []
    try:
        lorebook_ids = []
        if imported.lorebook is not None:
            lorebook_ids.append(store.create_lorebook(imported.lorebook).id)
            written.append(("lorebook", lorebook_ids[-1]))
        settings = imported.settings
        if imported.preset is not None:
            preset_id = store.create_preset(imported.preset).id
            written.append(("preset", preset_id))
            settings.preset_id = preset_id
        story = Story(content_id="", title=imported.title, description=imported.description, tags=list(imported.tags),
                      lorebook_ids=lorebook_ids, memory=imported.memory, authors_note=imported.authors_note,
                      story_config=imported.story_config, settings=settings, extra=dict(imported.extra))
        return store.create_story(text=imported.text, origin=imported.origin, story=story)
    except (FabulaError, OSError):
        for kind, id in reversed(written):
            try:
                if kind == "lorebook":
                    store.delete_lorebook(id)
                else:
                    store.delete_preset(id)
            except (FabulaError, OSError, ValueError):
                pass  # the import failed already; what is left is reported by that failure
        raise

"""Fabula's story documents, format version 2 (specified in docs/formats.md; test vectors in
docs/format-vectors.json): the typed classes every client shares, their JSON, and the store that
keeps them encrypted on a Fabula server.

    story.py      Story: the library entry (title, tags, preview...), memory, author's note, settings
    content.py    the text as blocks, deltas (Op), the history tree (History), its stored forms
                  (StoryContent snapshot, HistorySegment)
    lorebook.py   Lorebook, LorebookEntry, LorebookCategory (the text service's names)
    context.py    ContextConfig: where memory, notes, entries and the story go in the prompt
    preset.py     Preset, Sampling, SamplerStep
    image.py      ImageSettings, ImageDocument (PNG), thumbnails
    codec.py      JSON (de)serialisation and the format rules (unknown fields kept, versions)
    store.py      DocumentStore: create/open/save/delete on a FabulaClient
    request.py    generation_request: a story's documents as the gateway's generation body

    store = DocumentStore(client)
    doc = store.create_story(title="The Lighthouse", text="The keeper climbed the stairs.")
    doc.history.generate(" Below, the sea was black.")
    store.save(doc)                   # one small history segment + the story object
    doc = store.open(doc.id)          # fetch, decrypt, rebuild the text at the head
"""

from fabula_sdk.documents.codec import DocumentError, NewerFormatError
from fabula_sdk.documents.content import (
    Block, History, HistoryNode, HistorySegment, IllustrationBlock, NodeKind, Op, OpaqueBlock, Origin,
    StoryContent, TextBlock,
)
from fabula_sdk.documents.context import ContextConfig, TextUnit, TrimDirection
from fabula_sdk.documents.image import ImageDocument, ImageSettings
from fabula_sdk.documents.lorebook import Lorebook, LorebookCategory, LorebookEntry
from fabula_sdk.documents.preset import Preset, SamplerName, SamplerStep, Sampling
from fabula_sdk.documents.store import DocumentStore, Stored, StoryDocument
from fabula_sdk.documents.story import AuthorsNote, ContextText, LogitBias, Memory, PhraseBias, Story, StorySettings

__all__ = [
    "AuthorsNote", "Block", "ContextConfig", "ContextText", "DocumentError", "DocumentStore", "History",
    "HistoryNode", "HistorySegment", "IllustrationBlock", "ImageDocument", "ImageSettings", "LogitBias",
    "Lorebook", "LorebookCategory", "LorebookEntry", "Memory", "NewerFormatError", "NodeKind", "Op",
    "OpaqueBlock", "Origin", "PhraseBias", "Preset", "SamplerName", "SamplerStep", "Sampling", "Story",
    "StoryContent", "StoryDocument", "StorySettings", "Stored", "TextBlock", "TextUnit", "TrimDirection",
]

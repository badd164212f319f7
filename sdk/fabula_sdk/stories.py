"""Stories as two objects: the story (metadata: title, and which content object holds the text)
and its story content (the text). Both are JSON inside their encrypted envelopes:

    stories/<id>             {"version": 1, "title": "...", "content_id": "<id>", "updated_at": "<RFC 3339>"}
    storycontent/<content_id> {"version": 1, "text": "..."}

The content id is random and distinct from the story's id, because the keystore maps ids to keys
across every type (keystore.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fabula_sdk.client import FabulaClient
from fabula_sdk.errors import DecryptionError, NotFoundError
from fabula_sdk.models import ObjectType

FORMAT_VERSION = 1


@dataclass
class Story:
    """A story as read; `change_index`/`content_change_index` are what a save is based on (0 for
    a story not stored yet), so saving over someone else's newer version raises ConflictError."""

    id: str
    title: str
    text: str
    content_id: str
    change_index: int = 0
    content_change_index: int = 0
    updated_at: str = ""


@dataclass(frozen=True)
class StorySummary:
    id: str
    title: str
    updated_at: str
    change_index: int


def _json(plaintext: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DecryptionError(f"{what} decrypted but is not the JSON a story should hold") from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise DecryptionError(f"{what} decrypted but is not a version-{FORMAT_VERSION} story document")
    return data


def _text(data: dict[str, Any], key: str, what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise DecryptionError(f"{what} lacks the text field {key!r}")
    return value


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps({"version": FORMAT_VERSION, **document}, ensure_ascii=False, sort_keys=True).encode("utf-8")


class Stories:
    def __init__(self, client: FabulaClient) -> None:
        self.client = client

    def new(self, text: str, title: str = "", id: str | None = None) -> Story:
        """A story not stored yet (save it with `save`)."""
        return Story(id=id or self.client.new_id(), title=title, text=text, content_id=self.client.new_id())

    def load(self, id: str) -> Story:
        meta = self.client.get(ObjectType.STORY, id)
        data = _json(meta.plaintext, f"stories/{id}")
        content_id = _text(data, "content_id", f"stories/{id}")
        content = self.client.get(ObjectType.STORY_CONTENT, content_id)
        text = _text(_json(content.plaintext, f"storycontent/{content_id}"), "text", f"storycontent/{content_id}")
        return Story(id=id, title=_text(data, "title", f"stories/{id}"), text=text, content_id=content_id,
                     change_index=meta.meta.change_index, content_change_index=content.meta.change_index,
                     updated_at=str(data.get("updated_at", "")))

    def save(self, story: Story) -> Story:
        """Store the content, then the story (so a story never points at content that is not
        there); ConflictError if either changed since `story` was read."""
        updated_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        content = self.client.put(ObjectType.STORY_CONTENT, story.content_id, _encode({"text": story.text}),
                                  expected_change_index=story.content_change_index)
        story.content_change_index = content.change_index
        meta = self.client.put(ObjectType.STORY, story.id, _encode(
            {"title": story.title, "content_id": story.content_id, "updated_at": updated_at}),
            expected_change_index=story.change_index)
        story.change_index, story.updated_at = meta.change_index, updated_at
        return story

    def push(self, text: str, *, title: str | None = None, id: str | None = None, default_title: str = "") -> Story:
        """Create the story (titled `title`, else `default_title`), or replace the text (and the
        title, when given) of story `id`."""
        if id is not None:
            try:
                story = self.load(id)
            except NotFoundError:
                story = self.new(text, title if title is not None else default_title, id)
            else:
                story.text = text
                if title is not None:
                    story.title = title
        else:
            story = self.new(text, title if title is not None else default_title)
        return self.save(story)

    def list(self) -> list[StorySummary]:
        summaries = []
        for meta in self.client.list(ObjectType.STORY):
            data = _json(self.client.get(ObjectType.STORY, meta.id).plaintext, f"stories/{meta.id}")
            summaries.append(StorySummary(id=meta.id, title=_text(data, "title", f"stories/{meta.id}"),
                                          updated_at=str(data.get("updated_at", "")), change_index=meta.change_index))
        return summaries

    def delete(self, id: str) -> None:
        story = self.load(id)
        self.client.delete(ObjectType.STORY, id, expected_change_index=story.change_index)
        self.client.delete(ObjectType.STORY_CONTENT, story.content_id)

"""Stories as plain text: the API of the CLI's `stories push/pull/list/delete`, on top of the
story documents (documents/, format: docs/formats.md).

A story loaded here is its text at the head of its history; saving replaces that text with one
edit node (the smallest change) and refuses to overwrite a newer version (ConflictError, as
every stale write), then folds the history into the content's snapshot, so the content object
always holds the whole story. Version-1 stories (`{"version": 1, "title", "content_id",
"updated_at"}` and `{"version": 1, "text"}`) are read and become version 2 on their first save.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fabula_sdk.client import FabulaClient
from fabula_sdk.documents import codec
from fabula_sdk.documents.content import Origin
from fabula_sdk.documents.store import DocumentStore, StoryDocument
from fabula_sdk.errors import DecryptionError, NotFoundError


@dataclass
class Story:
    """A story as read; `change_index`/`content_change_index` are what a save is based on (0 for
    a story not stored yet), so saving over someone else's newer version raises ConflictError.
    `document` is the full story document it was read from (None for a new story)."""

    id: str
    title: str
    text: str
    content_id: str
    change_index: int = 0
    content_change_index: int = 0
    updated_at: str = ""
    document: StoryDocument | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class StorySummary:
    id: str
    title: str
    updated_at: str
    change_index: int


def _from_document(doc: StoryDocument) -> Story:
    return Story(id=doc.id, title=doc.story.title, text=doc.text, content_id=doc.content_id,
                 change_index=doc.change_index, content_change_index=doc.content_change_index,
                 updated_at=doc.story.updated_at, document=doc)


class Stories:
    def __init__(self, client: FabulaClient) -> None:
        self.client = client
        self.store = DocumentStore(client)

    def new(self, text: str, title: str = "", id: str | None = None) -> Story:
        """A story not stored yet (save it with `save`)."""
        return Story(id=id or self.client.new_id(), title=title, text=text, content_id="")

    def load(self, id: str) -> Story:
        try:
            return _from_document(self.store.open(id))
        except codec.DocumentError as error:
            # Authentic but not a story document this SDK can read.
            raise DecryptionError(str(error)) from None

    def save(self, story: Story) -> Story:
        """Store the text (and title); ConflictError if the story changed since `story` was read."""
        doc = story.document
        if doc is None:
            doc = self.store.create_story(title=story.title, text=story.text, origin=Origin.USER, id=story.id)
        else:
            doc.story.title = story.title
            doc.history.set_text(story.text)
            self.store.save(doc, on_conflict="raise", compact=True)
        saved = _from_document(doc)
        story.content_id, story.change_index, story.content_change_index = (
            saved.content_id, saved.change_index, saved.content_change_index)
        story.updated_at, story.document = saved.updated_at, doc
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
        try:
            entries = self.store.list_stories()
        except codec.DocumentError as error:
            raise DecryptionError(str(error)) from None
        return [StorySummary(id=entry.id, title=entry.document.title, updated_at=entry.document.updated_at,
                             change_index=entry.change_index) for entry in entries]

    def delete(self, id: str) -> None:
        self.store.delete_story(id)

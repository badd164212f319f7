"""Stories, lorebooks, presets and images kept end-to-end encrypted on a Fabula server
(docs/formats.md, "Saving and conflicts").

    store = DocumentStore(client)          # or client.documents
    doc = store.create_story(title="The Lighthouse", text="The keeper climbed the stairs.")
    doc.history.generate(" Below, the sea was black.")
    store.save(doc)

**Objects of a story.** `stories/<id>` (the `Story`), `storycontent/<content id>` (the
`StoryContent` snapshot), `storycontent/<content id>_h<n>` (history segment n, a derived object:
its key is derived from the content's, see keystore.py), and the `images` its illustrations name.

**Open** reads the story, the snapshot, and the committed segments the snapshot has not folded
(`segments_folded` ≤ n < `history_segments`), and rebuilds the text at the head.

**Save** writes what changed since the last save as segment n = `history_segments` (created,
never overwritten), then the story with `history_segments` = n + 1 under its change index: that
write commits the segment. When either is refused because another device saved first, the store
reloads and puts this device's unsaved nodes back as new branches of the reloaded tree (and
this device's changed story fields over the reloaded ones), then saves again; nothing local is
lost. A segment that exists but was never committed (its writer stopped between the two writes)
is adopted: its nodes are committed with this save's. Past `compact_after` segments, the
committed tree is folded into a new snapshot (written under the content's change index) and the
folded segments are deleted.

A version-1 story is read as version 2; its first save writes its content as a version-2
snapshot before anything else. A document in a newer format version is read but never saved
(`NewerFormatError`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fabula_sdk.client import FabulaClient
from fabula_sdk.documents import codec
from fabula_sdk.documents.content import History, HistorySegment, IllustrationBlock, Origin, StoryContent, TextBlock
from fabula_sdk.documents.content import VERSION as CONTENT_VERSION
from fabula_sdk.documents.image import ImageDocument, make_thumbnail, thumbnail_id
from fabula_sdk.documents.lorebook import Lorebook
from fabula_sdk.documents.preset import Preset
from fabula_sdk.documents.story import VERSION as STORY_VERSION
from fabula_sdk.documents.story import Story, utc_now
from fabula_sdk.errors import ConflictError, NotFoundError
from fabula_wire import ObjectType

# Segments a story may have before a save folds them into a new snapshot: each open fetches every
# unfolded segment, and each is one object of the account's quota.
COMPACT_AFTER = 32
# How often a save that keeps meeting other devices' saves reloads and tries again.
SAVE_ATTEMPTS = 8
# How often an open that raced a compaction (a segment gone, a snapshot newer than the story) retries.
OPEN_ATTEMPTS = 4
# Content ids are made short enough that `<content id>_h<n>` stays within the 64-character id limit.
MAX_CONTENT_ID_CHARS = 48

T = TypeVar("T")


def segment_id(content_id: str, seq: int) -> str:
    return f"{content_id}_h{seq}"


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class StoryDocument:
    """An open story: the `Story` object, its history tree, and the change indexes they were read
    at. `base` is the story as last read or saved, so a conflicting save knows which fields
    this device changed."""

    id: str
    story: Story
    history: History
    change_index: int = 0
    content_change_index: int = 0
    segments_folded: int = 0  # of the snapshot as last read or written
    # The snapshot's fields this SDK does not know, written back by compaction.
    content_extra: dict = field(default_factory=dict, repr=False)
    # The newest format version among the content and segments read; above 2 the story is read-only.
    content_version: int = CONTENT_VERSION
    base: Story | None = field(default=None, repr=False)
    needs_migration: bool = False

    @property
    def content_id(self) -> str:
        return self.story.content_id

    @property
    def text(self) -> str:
        return self.history.text

    @property
    def blocks(self) -> list:
        return self.history.blocks


@dataclass
class Stored(Generic[T]):
    """A standalone document (lorebook, preset) with its id and the change index it was read at."""

    id: str
    document: T
    change_index: int = 0


class DocumentStore:
    def __init__(self, client: FabulaClient, *, compact_after: int = COMPACT_AFTER) -> None:
        self.client = client
        self.compact_after = compact_after

    # --- stories -----------------------------------------------------------------------------

    def create_story(self, *, title: str = "", text: str = "", origin: Origin = Origin.PROMPT,
                     lorebook_ids: list[str] | None = None, id: str | None = None,
                     story: Story | None = None) -> StoryDocument:
        """A new story, stored at once: `text` (the opening, of `origin`) is the root's text."""
        content_id = new_id()
        story = story or Story(content_id=content_id)
        story.content_id = content_id
        if title:
            story.title = title
        if lorebook_ids is not None:
            story.lorebook_ids = list(lorebook_ids)
        story.created_at = story.created_at or utc_now()
        history = History.new([TextBlock(text, origin)] if text else [])
        doc = StoryDocument(id=id or new_id(), story=story, history=history)
        return self.save(doc)

    def open(self, id: str) -> StoryDocument:
        """Fetch and decrypt the story, its snapshot and its segments; the text at the head."""
        for attempt in range(OPEN_ATTEMPTS):
            meta = self.client.get(ObjectType.STORY, id)
            story = Story.from_bytes(meta.plaintext, f"stories/{id}")
            content_obj = self.client.get(ObjectType.STORY_CONTENT, story.content_id)
            content = StoryContent.from_bytes(content_obj.plaintext, f"storycontent/{story.content_id}")
            if content.segments_folded > story.history_segments:
                continue  # compacted after the story was read: read the story again
            try:
                segments = [self._segment(story.content_id, seq)
                            for seq in range(content.segments_folded, story.history_segments)]
            except NotFoundError:
                if attempt == OPEN_ATTEMPTS - 1:
                    raise
                continue  # folded and deleted by a compaction meanwhile
            history = History.from_stored(content, segments)
            newest = max([content.version, *(segment.version for segment in segments)])
            return StoryDocument(id=id, story=story, history=history, change_index=meta.meta.change_index,
                                 content_change_index=content_obj.meta.change_index,
                                 segments_folded=content.segments_folded, content_extra=content.extra,
                                 content_version=newest, base=_copy_story(story),
                                 needs_migration=content.migrated_from is not None or story.migrated_from is not None)
        raise ConflictError(409, "ABORTED", f"stories/{id} kept changing while it was read; try again")

    def _segment(self, content_id: str, seq: int) -> HistorySegment:
        what = f"storycontent/{segment_id(content_id, seq)}"
        segment = HistorySegment.from_bytes(
            self.client.get(ObjectType.STORY_CONTENT, segment_id(content_id, seq)).plaintext, what)
        if segment.content_id != content_id or segment.seq != seq:
            raise codec.DocumentError(f"{what}: holds segment {segment.seq} of {segment.content_id}")
        return segment

    def save(self, doc: StoryDocument, *, on_conflict: str = "branch", compact: bool = False) -> StoryDocument:
        """Store what changed (see the module docstring). `on_conflict="raise"` raises
        ConflictError instead of reloading and branching. `compact` folds the history into a
        new snapshot now, whatever the number of segments."""
        if on_conflict not in ("branch", "raise"):
            raise ValueError(f'on_conflict must be "branch" or "raise", not {on_conflict!r}')
        codec.check_writable(doc.story, STORY_VERSION, f"stories/{doc.id}")
        if doc.content_version > CONTENT_VERSION:
            raise codec.NewerFormatError(f"storycontent/{doc.content_id} is format version {doc.content_version}, "
                                         f"newer than the version {CONTENT_VERSION} this SDK writes: it can be read "
                                         "but not saved (update the SDK)")
        if doc.change_index == 0:
            return self._create(doc)
        for _ in range(SAVE_ATTEMPTS):
            try:
                if doc.needs_migration:
                    self._migrate(doc)
                self._append(doc)
                break
            except ConflictError:
                if on_conflict == "raise":
                    raise
                self._merge_stored(doc)
        else:
            raise ConflictError(409, "ABORTED", f"stories/{doc.id} kept changing during the save; try again")
        if compact or doc.story.history_segments - doc.segments_folded >= self.compact_after:
            self._compact(doc)
        return doc

    def _create(self, doc: StoryDocument) -> StoryDocument:
        if len(doc.content_id) > MAX_CONTENT_ID_CHARS:
            raise ValueError(f"content id must be at most {MAX_CONTENT_ID_CHARS} characters (its history "
                             f"segments' ids add a suffix), not {len(doc.content_id)}")
        self._stamp(doc)
        doc.story.history_segments = 0
        content = doc.history.compacted(0)
        meta = self.client.put(ObjectType.STORY_CONTENT, doc.content_id, content.to_bytes(), expected_change_index=0)
        doc.content_change_index, doc.segments_folded = meta.change_index, 0
        meta = self.client.put(ObjectType.STORY, doc.id, doc.story.to_bytes(), expected_change_index=0)
        doc.change_index = meta.change_index
        doc.history.mark_saved()
        doc.base = _copy_story(doc.story)
        return doc

    def _migrate(self, doc: StoryDocument) -> None:
        """Write a version-1 story's content as a version-2 snapshot of its stored state (the
        root), under the content's change index; the story itself is rewritten by the save."""
        stored = self.client.get(ObjectType.STORY_CONTENT, doc.content_id)
        content = StoryContent.from_bytes(stored.plaintext, f"storycontent/{doc.content_id}")
        if content.migrated_from is not None:
            content.version = CONTENT_VERSION
            meta = self.client.put(ObjectType.STORY_CONTENT, doc.content_id, content.to_bytes(),
                                   expected_change_index=stored.meta.change_index)
            doc.content_change_index = meta.change_index
        doc.needs_migration = False

    def _append(self, doc: StoryDocument) -> None:
        """Segment n (if the history changed), then the story committing it; ConflictError if
        another device got there first."""
        seq = doc.story.history_segments
        history = doc.history
        committed = seq
        if history.unsaved:
            segment = history.segment(doc.content_id, seq)
            try:
                self.client.put(ObjectType.STORY_CONTENT, segment_id(doc.content_id, seq), segment.to_bytes(),
                                expected_change_index=0)
            except ConflictError:
                if not self._adopt_orphan(doc, segment):
                    raise
            committed = seq + 1
        self._stamp(doc)
        doc.story.history_segments = committed
        try:
            meta = self.client.put(ObjectType.STORY, doc.id, doc.story.to_bytes(),
                                   expected_change_index=doc.change_index)
        except ConflictError:
            doc.story.history_segments = seq
            raise
        doc.change_index = meta.change_index
        history.mark_saved()
        doc.base = _copy_story(doc.story)

    def _adopt_orphan(self, doc: StoryDocument, segment: HistorySegment) -> bool:
        """Segment `segment.seq` exists. True if it is this very segment (written by an earlier
        attempt of this save); otherwise False, and the caller reloads (which adopts it if it
        was never committed)."""
        try:
            existing = self._segment(doc.content_id, segment.seq)
        except NotFoundError:
            return False
        return existing.to_json() == segment.to_json()

    def _merge_stored(self, doc: StoryDocument) -> None:
        """After a refused write: reload, adopt an uncommitted segment at the next number, and put
        this device's unsaved nodes and changed story fields on top of what is stored."""
        stored = self.open(doc.id)
        seq = stored.story.history_segments
        try:
            orphan: HistorySegment | None = self._segment(doc.content_id, seq)
        except NotFoundError:
            orphan = None
        local = doc.history
        pending = [node.to_json() for node in local.nodes[local.saved_nodes:]]
        if orphan is not None:
            # Written but never committed (by an earlier attempt of ours, or by a device that
            # stopped or is about to commit it): its nodes are committed with ours.
            try:
                stored.history = History.from_stored(stored.history.compacted(0), [orphan])
            except codec.DocumentError as error:
                raise codec.DocumentError(f"storycontent/{segment_id(doc.content_id, seq)} is an uncommitted "
                                          f"segment that does not fit the stored history ({error})") from None
            stored.story.history_segments = seq + 1  # committed by our next story write
        if pending and _holds(stored.history, local.nodes[local.saved_nodes:]):
            merged = stored.history  # our nodes are already stored (committed by another device's save)
            if local.head != local.saved_head:
                merged.checkout(local.head)
        else:
            merged = local.rebased_onto(stored.history)
        doc.story = _merge_fields(doc.base or stored.story, doc.story, stored.story)
        doc.story.history_segments = stored.story.history_segments
        doc.story.content_id = stored.story.content_id
        doc.history = merged
        doc.change_index = stored.change_index
        doc.content_change_index = stored.content_change_index
        doc.base = _copy_story(stored.story)
        doc.needs_migration = stored.needs_migration
        doc.segments_folded = stored.segments_folded
        doc.content_extra, doc.content_version = stored.content_extra, stored.content_version

    def _compact(self, doc: StoryDocument) -> None:
        """Fold the committed segments into a new snapshot; another device's compaction winning
        the race is fine (it folded the same history), so a conflict is not an error."""
        folded_before = doc.segments_folded
        content = doc.history.compacted(doc.story.history_segments)
        content.extra = dict(doc.content_extra)
        try:
            meta = self.client.put(ObjectType.STORY_CONTENT, doc.content_id, content.to_bytes(),
                                   expected_change_index=doc.content_change_index)
        except ConflictError:
            return
        doc.content_change_index, doc.segments_folded = meta.change_index, doc.story.history_segments
        for seq in range(folded_before, doc.story.history_segments):
            self._delete_quietly(ObjectType.STORY_CONTENT, segment_id(doc.content_id, seq))

    def _stamp(self, doc: StoryDocument) -> None:
        doc.story.updated_at = utc_now()
        doc.story.created_at = doc.story.created_at or doc.story.updated_at
        doc.story.set_preview(doc.history.text)
        doc.story.version = STORY_VERSION

    def list_stories(self) -> list[Stored[Story]]:
        """Every story's library entry (the small story objects only; no content is fetched)."""
        out = []
        for meta in self.client.list(ObjectType.STORY):
            story = Story.from_bytes(self.client.get(ObjectType.STORY, meta.id).plaintext, f"stories/{meta.id}")
            out.append(Stored(meta.id, story, meta.change_index))
        return out

    def delete_story(self, id: str) -> None:
        """Delete the story, its content, every history segment (committed or not) and every image
        its history names; its lorebooks too, unless another story uses them."""
        doc = self.open(id)
        images = {block.image_id for node in doc.history.nodes for op in node.ops for block in op.blocks
                  if isinstance(block, IllustrationBlock)}
        self.client.delete(ObjectType.STORY, id, expected_change_index=doc.change_index)
        prefix = doc.content_id + "_h"
        for meta in list(self.client.list(ObjectType.STORY_CONTENT)):
            if meta.id.startswith(prefix) and meta.id[len(prefix):].isdigit():
                self._delete_quietly(ObjectType.STORY_CONTENT, meta.id)
        self._delete_quietly(ObjectType.STORY_CONTENT, doc.content_id)
        for image in sorted(images):
            self.delete_image(image)
        if doc.story.lorebook_ids:
            used = {lorebook for other in self.list_stories() for lorebook in other.document.lorebook_ids}
            for lorebook in doc.story.lorebook_ids:
                if lorebook not in used:
                    self._delete_quietly(ObjectType.LOREBOOK, lorebook)

    def _delete_quietly(self, type: ObjectType, id: str) -> None:
        try:
            self.client.delete(type, id)
        except NotFoundError:
            pass  # already gone (another device deleted it): the goal is reached

    # --- lorebooks and presets ---------------------------------------------------------------

    def create_lorebook(self, lorebook: Lorebook, id: str | None = None) -> Stored[Lorebook]:
        return self._create_standalone(ObjectType.LOREBOOK, lorebook, id)

    def open_lorebook(self, id: str) -> Stored[Lorebook]:
        stored = self.client.get(ObjectType.LOREBOOK, id)
        return Stored(id, Lorebook.from_bytes(stored.plaintext, f"lorebooks/{id}"), stored.meta.change_index)

    def save_lorebook(self, stored: Stored[Lorebook]) -> Stored[Lorebook]:
        """ConflictError if another device saved it since it was read (read it again and redo the change)."""
        return self._save_standalone(ObjectType.LOREBOOK, stored, 2)

    def delete_lorebook(self, id: str) -> None:
        """Delete a lorebook; ValueError if a story still uses it (remove it from those first)."""
        users = [story.id for story in self.list_stories() if id in story.document.lorebook_ids]
        if users:
            raise ValueError(f"lorebook {id} is used by {len(users)} stories (e.g. {users[0]}); remove it there first")
        self.client.delete(ObjectType.LOREBOOK, id)

    def list_lorebooks(self) -> list[Stored[Lorebook]]:
        return [self.open_lorebook(meta.id) for meta in self.client.list(ObjectType.LOREBOOK)]

    def create_preset(self, preset: Preset, id: str | None = None) -> Stored[Preset]:
        return self._create_standalone(ObjectType.PRESET, preset, id)

    def open_preset(self, id: str) -> Stored[Preset]:
        stored = self.client.get(ObjectType.PRESET, id)
        return Stored(id, Preset.from_bytes(stored.plaintext, f"presets/{id}"), stored.meta.change_index)

    def save_preset(self, stored: Stored[Preset]) -> Stored[Preset]:
        return self._save_standalone(ObjectType.PRESET, stored, 2)

    def delete_preset(self, id: str) -> None:
        self.client.delete(ObjectType.PRESET, id)

    def list_presets(self) -> list[Stored[Preset]]:
        return [self.open_preset(meta.id) for meta in self.client.list(ObjectType.PRESET)]

    def _create_standalone(self, type: ObjectType, document: Lorebook | Preset, id: str | None) -> Stored:
        stored = Stored(id or new_id(), document, 0)
        return self._save_standalone(type, stored, 2)

    def _save_standalone(self, type: ObjectType, stored: Stored, version: int) -> Stored:
        codec.check_writable(stored.document, version, f"{type.value}/{stored.id}")
        meta = self.client.put(type, stored.id, stored.document.to_bytes(), expected_change_index=stored.change_index)
        stored.change_index = meta.change_index
        return stored

    # --- images ------------------------------------------------------------------------------

    def store_image(self, png: bytes, *, thumbnail: bytes | None = None, id: str | None = None,
                    make_thumbnail_with: Callable[[bytes], bytes] = make_thumbnail) -> str:
        """Store a PNG and its thumbnail (`thumbnail`, else made from it); the image's id."""
        image = ImageDocument(png).check("image")
        id = id or new_id()
        if len(thumbnail_id(id)) > 64:
            raise ValueError(f"image id must be at most {64 - len(thumbnail_id(''))} characters (its thumbnail's id "
                             f"adds a suffix), not {len(id)}")
        small = thumbnail if thumbnail is not None else make_thumbnail_with(image.png)
        ImageDocument(small).check("thumbnail")
        # PNG is already deflated: compressing again would only cost time.
        self.client.put(ObjectType.IMAGE, id, image.png, expected_change_index=0, compress=False)
        self.client.put(ObjectType.IMAGE, thumbnail_id(id), small, expected_change_index=0, compress=False)
        return id

    def open_image(self, id: str) -> ImageDocument:
        return ImageDocument(self.client.get(ObjectType.IMAGE, id).plaintext).check(f"images/{id}")

    def open_thumbnail(self, id: str) -> ImageDocument:
        return ImageDocument(self.client.get(ObjectType.IMAGE, thumbnail_id(id)).plaintext).check(
            f"images/{thumbnail_id(id)}")

    def delete_image(self, id: str) -> None:
        """The thumbnail first: its key is derived from the image's, which goes with the image."""
        self._delete_quietly(ObjectType.IMAGE, thumbnail_id(id))
        self._delete_quietly(ObjectType.IMAGE, id)

    def list_images(self) -> Iterator[str]:
        """The ids of the stored images (thumbnails left out)."""
        for meta in self.client.list(ObjectType.IMAGE):
            if not meta.id.endswith("_thumb"):
                yield meta.id


def _copy_story(story: Story) -> Story:
    copy = Story.from_json(story.to_json())
    copy.migrated_from = story.migrated_from
    return copy


def _merge_fields(base: Story, local: Story, theirs: Story) -> Story:
    """`theirs` with every field this device changed since `base` taken from `local`."""
    base_json, local_json = base.to_json(), local.to_json()
    merged = theirs.to_json()
    for key in set(local_json) | set(base_json):
        if local_json.get(key) != base_json.get(key):
            if key in local_json:
                merged[key] = local_json[key]
            else:
                merged.pop(key, None)
    result = Story.from_json(merged)
    result.migrated_from = theirs.migrated_from
    return result


def _holds(history: History, nodes: list) -> bool:
    """Whether `history` holds exactly these nodes at their ids."""
    return all(node.id < len(history.nodes) and history.nodes[node.id].to_json() == node.to_json() for node in nodes)

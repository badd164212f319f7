"""Writing with a stored story: continue it, retry a continuation, illustrate it. What the CLI's
`fabula stories continue / retry / illustrate` do, usable from any program.

    store = DocumentStore(client)
    doc = store.open(story_id)
    writer = StoryWriter(store, url, token)
    for piece in writer.continue_story(doc):   # streams the text, then saves a generation node
        print(piece, end="")

A continuation sends the story's own documents (memory, author's note, context configs, every
entry and category of its lorebooks, its settings over its preset; documents/request.py) and
saves the text as one history node: `generation` below the head, or with `retry=True` a
`retry` node, a sibling of the generation at the head. An illustration is generated with the
story's image defaults under the given prompt, stored as an `images` object with its thumbnail,
and inserted as an illustration block carrying the exact settings (seed included).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fabula_sdk.documents import codec
from fabula_sdk.documents.content import IllustrationBlock, NodeKind
from fabula_sdk.documents.image import ImageSettings
from fabula_sdk.documents.lorebook import Lorebook
from fabula_sdk.documents.preset import Preset
from fabula_sdk.documents.request import generation_request
from fabula_sdk.documents.store import DocumentStore, StoryDocument
from fabula_sdk.image import GeneratedImage, ImageClient
from fabula_sdk.text import ContextReport, GenerationStats, TextClient, TextPiece


@dataclass
class Continuation:
    """What one continuation made: the text, the node it was saved as, the context report."""

    text: str
    node: int | None  # None when the model wrote nothing (then nothing is saved)
    stats: GenerationStats | None
    context_report: ContextReport | None


def story_lorebooks(store: DocumentStore, doc: StoryDocument) -> list[Lorebook]:
    return [store.open_lorebook(id).document for id in doc.story.lorebook_ids]


def story_preset(store: DocumentStore, doc: StoryDocument) -> Preset | None:
    preset_id = doc.story.settings.preset_id
    return store.open_preset(preset_id).document if preset_id else None


def continuation_request(store: DocumentStore, doc: StoryDocument, *, retry: bool = False,
                         max_new_tokens: int | None = None, seed: int | None = None,
                         max_context_tokens: int = 0) -> dict:
    """The generation body for the story's next continuation (for a retry: of the text the
    generation at the head continued)."""
    text = doc.history.text
    if retry:
        head = doc.history.node(doc.history.head)
        if head.kind not in (NodeKind.GENERATION, NodeKind.RETRY) or head.parent is None:
            raise ValueError(f"retry needs a generation at the head, not a {head.kind} node (continue instead)")
        text = doc.history.text_at(head.parent)
    body = generation_request(doc.story, text, story_lorebooks(store, doc), story_preset(store, doc),
                              max_context_tokens=max_context_tokens, seed=seed)
    if max_new_tokens is not None:
        body["max_new_tokens"] = max_new_tokens
    return body


class StoryWriter:
    def __init__(self, store: DocumentStore, url: str, token: str) -> None:
        self.store = store
        self.url = url
        self.token = token
        self.last: Continuation | None = None

    def continue_story(self, doc: StoryDocument, *, retry: bool = False, max_new_tokens: int | None = None,
                       seed: int | None = None, on_report: Callable[[ContextReport], None] | None = None,
                       ) -> Iterator[str]:
        """Yields the text as it is written; when the stream ends, the text is saved as a
        history node (`generation`, or `retry`; none if the model wrote nothing) and `self.last`
        holds the Continuation."""
        body = continuation_request(self.store, doc, retry=retry, max_new_tokens=max_new_tokens, seed=seed)
        pieces: list[str] = []
        stats = report = None
        with TextClient(self.url, self.token) as ai:
            for event in ai.stream(**body):
                if isinstance(event, TextPiece):
                    pieces.append(event.text)
                    yield event.text
                elif isinstance(event, ContextReport):
                    report = event
                    if on_report is not None:
                        on_report(event)
                elif isinstance(event, GenerationStats):
                    stats = event
        text = "".join(pieces)
        if not text:
            # An empty node would hold an empty text block, which the format does not allow.
            self.last = Continuation("", None, stats, report)
            return
        node = doc.history.retry(text) if retry else doc.history.generate(text)
        self.store.save(doc)
        self.last = Continuation(text, node.id, stats, report)

    def illustrate(self, doc: StoryDocument, prompt: str, *, caption: str = "", at: int | None = None,
                   **overrides: object) -> IllustrationBlock:
        """Generate a picture (the story's image defaults, `prompt`, then `overrides` by the image
        request's names), store it with its thumbnail, insert the illustration block and save."""
        values = codec.encode(doc.story.settings.image)
        values.update(prompt=prompt, **overrides)
        settings = codec.decode(ImageSettings, values, "image settings")
        with ImageClient(self.url, self.token) as ai:
            result = ai.generate(**settings.request(), n_images=1)
        image: GeneratedImage = result.images[0]
        settings.seed, settings.width, settings.height = image.seed, image.width, image.height
        settings.steps = result.accepted.steps or settings.steps
        settings.sampler = settings.sampler or result.accepted.sampler
        settings.model = settings.model or result.accepted.model
        image_id = self.store.store_image(image.png)
        block = IllustrationBlock(image_id, caption or prompt, settings)
        doc.history.illustrate(block, at)
        self.store.save(doc)
        return block


def image_model_facts(metadata: dict[str, str]) -> dict:
    """The image service's own metadata of a PNG it made (its "fabula" text chunk), or {}."""
    try:
        facts = json.loads(metadata.get("fabula", ""))
    except ValueError:
        return {}
    return facts if isinstance(facts, dict) else {}

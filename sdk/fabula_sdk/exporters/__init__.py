"""Exporting a story for readers outside Fabula, made on this machine from the decrypted
documents: `story_html` (one standalone HTML file, images embedded) and `story_epub` (an EPUB
book). `export_story` opens a stored story and its pictures and writes either.

    data = export_story(DocumentStore(client), story_id, "epub")
"""

from __future__ import annotations

from fabula_sdk.documents.content import IllustrationBlock
from fabula_sdk.documents.image import ImageDocument
from fabula_sdk.documents.store import DocumentStore
from fabula_sdk.exporters.epub import story_epub
from fabula_sdk.exporters.html import story_html
from fabula_sdk.exporters.render import NOISE_NOTE, is_builtin_image

__all__ = ["EXPORT_FORMATS", "NOISE_NOTE", "export_story", "is_builtin_image", "story_epub", "story_html"]

EXPORT_FORMATS = ("html", "epub")


def export_story(store: DocumentStore, story_id: str, format: str, *, author: str = "") -> bytes:
    """The story at its current node as an HTML page or an EPUB book."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}")
    doc = store.open(story_id)
    blocks = doc.blocks
    images: dict[str, ImageDocument] = {}
    for block in blocks:
        if isinstance(block, IllustrationBlock) and block.image_id not in images:
            images[block.image_id] = store.open_image(block.image_id)
    if format == "html":
        return story_html(doc.story, blocks, images).encode("utf-8")
    return story_epub(doc.story, blocks, images, identifier=story_id, author=author)

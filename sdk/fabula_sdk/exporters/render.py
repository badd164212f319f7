"""The story as (X)HTML markup, shared by the HTML and EPUB exporters: paragraphs from the text's
blank lines, AI-written text marked, illustrations as figures with their captions, and a visible
note under pictures of the built-in image model (an untrained test model whose output is noise;
the image's own metadata names the model that made it).

The markup is XHTML (every element closed) so the EPUB can use it as is; it is also valid HTML.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fabula_sdk.documents.content import Block, IllustrationBlock, Origin, TextBlock
from fabula_sdk.documents.image import ImageDocument
from fabula_sdk.writing import image_model_facts

NOISE_NOTE = ("Made by Fabula's built-in image model, an untrained test model: this picture is noise, "
              "not a drawing of the caption.")
ORIGIN_LABELS = {Origin.AI: "written by the AI", Origin.EDIT: "AI text edited by the author",
                 Origin.USER: "written by the author", Origin.PROMPT: "the opening prompt"}
# A line that starts a chapter in the EPUB (and a heading in the HTML): Markdown's # and ##.
_HEADING = re.compile(r"^(#{1,2})\s+(.+?)\s*#*\s*$")

STYLE = """
body { font-family: Georgia, 'Times New Roman', serif; line-height: 1.6; max-width: 42em; margin: 2em auto;
       padding: 0 1em; color: #1a1a1a; background: #fffdf8; }
.origin-ai, .origin-edit { background: #e6f0ff; border-bottom: 1px dotted #3060a0; }
.origin-edit { background: #eef5e6; border-bottom-color: #508030; }
figure { margin: 1.5em 0; text-align: center; }
figure img { max-width: 100%; height: auto; }
figcaption { font-style: italic; }
.image-note { font-size: 0.9em; color: #7a2a00; border: 1px solid #d08050; padding: 0.3em; }
.legend { font-size: 0.9em; color: #444; border-top: 1px solid #ccc; border-bottom: 1px solid #ccc; }
"""


def is_builtin_image(image: ImageDocument) -> bool:
    return bool(image_model_facts(image.metadata).get("builtin_model"))


@dataclass
class Figure:
    image_id: str
    caption: str
    image: ImageDocument | None


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _inline(text: str, origin: Origin) -> str:
    escaped = html.escape(text, quote=False).replace("\n", "<br/>")
    if origin in (Origin.AI, Origin.EDIT):
        return (f'<span class="origin-{origin.value}" data-origin="{origin.value}" '
                f'title="{ORIGIN_LABELS[origin]}">{escaped}</span>')
    return escaped


def figure_markup(figure: Figure, src: Callable[[str, ImageDocument], str]) -> str:
    caption = html.escape(figure.caption)
    if figure.image is None:
        return f'<figure><p class="image-note" role="note">Missing picture: {caption}</p></figure>'
    width, height = figure.image.size
    parts = [f'<figure id="image-{html.escape(figure.image_id)}">',
             f'<img src="{src(figure.image_id, figure.image)}" alt="{caption}" width="{width}" height="{height}"/>',
             f"<figcaption>{caption}</figcaption>"]
    if is_builtin_image(figure.image):
        parts.append(f'<p class="image-note" role="note">{html.escape(NOISE_NOTE, quote=False)}</p>')
    parts.append("</figure>")
    return "".join(parts)


def sections(blocks: Iterable[Block]) -> list[tuple[str, list[str | Figure]]]:
    """The story split at its heading lines: [(heading, [paragraph markup | Figure, ...])]; the
    part before the first heading has the heading "". Blank lines end paragraphs, single line
    breaks stay line breaks."""
    out: list[tuple[str, list[str | Figure]]] = [("", [])]
    paragraph: list[str] = []

    def close() -> None:
        while paragraph and paragraph[-1] == "<br/>":
            paragraph.pop()
        if paragraph:
            out[-1][1].append("<p>" + "".join(paragraph) + "</p>")
        paragraph.clear()

    for block in blocks:
        if isinstance(block, IllustrationBlock):
            close()
            out[-1][1].append(Figure(block.image_id, block.caption, None))
            continue
        if not isinstance(block, TextBlock):
            continue
        for piece in re.split(r"(\n[ \t]*\n\s*)", block.text):
            if not piece:
                continue
            if not piece.strip() and piece.count("\n") >= 2:
                close()
                continue
            for index, line in enumerate(piece.split("\n")):
                if index > 0 and paragraph:
                    paragraph.append("<br/>")
                heading = _HEADING.match(line)
                if heading and not any(part != "<br/>" for part in paragraph):
                    paragraph.clear()
                    out.append((heading.group(2), []))
                    continue
                if line:
                    paragraph.append(_inline(line, block.origin))
    close()
    return [(title, items) for index, (title, items) in enumerate(out) if items or title or index == 0]


def legend() -> str:
    return ('<p class="legend">Text <span class="origin-ai" data-origin="ai">marked like this</span> was written by '
            'the AI; <span class="origin-edit" data-origin="edit">marked like this</span>, AI text the author '
            'edited. Everything else was written by the author.</p>')

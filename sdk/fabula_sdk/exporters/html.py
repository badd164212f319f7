"""A story as one standalone HTML file: the text with AI-written runs marked, the illustrations
embedded as data URIs, no scripts and nothing fetched from elsewhere, so it opens offline in any
browser and reads aloud in order with a screen reader (one `main`, headings, figures with
`alt` text and captions)."""

from __future__ import annotations

import html

from fabula_sdk.documents.content import Block
from fabula_sdk.documents.image import ImageDocument
from fabula_sdk.documents.story import Story
from fabula_sdk.exporters.render import STYLE, Figure, data_uri, figure_markup, legend, sections


def story_html(story: Story, blocks: list[Block], images: dict[str, ImageDocument], *, language: str = "en") -> str:
    """The HTML page; `images` maps every illustrated image id to its picture."""
    title = html.escape(story.title or "Untitled story")
    body: list[str] = [f"<header><h1>{title}</h1>"]
    if story.description:
        body.append(f'<p class="description">{html.escape(story.description)}</p>')
    body.append(legend())
    body.append("</header>")
    for heading, items in sections(blocks):
        body.append("<section>")
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, Figure):
                item.image = images.get(item.image_id)
                body.append(figure_markup(item, lambda _id, image: data_uri(image.png)))
            else:
                body.append(item)
        body.append("</section>")
    return "\n".join([
        "<!DOCTYPE html>",
        f'<html lang="{html.escape(language)}">',
        "<head>",
        '<meta charset="utf-8"/>',
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>',
        # Nothing may load from elsewhere: a reader opens the file offline, and a story must not phone home.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\"/>",
        '<meta name="generator" content="Fabula"/>',
        f"<title>{title}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "<main>",
        "<article>",
        *body,
        "</article>",
        "</main>",
        "</body>",
        "</html>",
        "",
    ])

"""A story as an EPUB 3 book (made with ebooklib): a title page, one chapter per heading of the
text (`#` or `##` lines; a story without headings is one chapter), the illustrations as image
files of the book, AI-written text marked as in the HTML export, and the built-in image model's
pictures carrying their visible note."""

from __future__ import annotations

import html
import io

from ebooklib import epub

from fabula_sdk.documents.content import Block
from fabula_sdk.documents.image import ImageDocument
from fabula_sdk.documents.story import Story
from fabula_sdk.exporters.render import STYLE, Figure, figure_markup, legend, sections


def story_epub(story: Story, blocks: list[Block], images: dict[str, ImageDocument], *, identifier: str,
               language: str = "en", author: str = "") -> bytes:
    """The EPUB file's bytes; `identifier` is the book's unique id (the story's id)."""
    book = epub.EpubBook()
    title = story.title or "Untitled story"
    book.set_identifier(f"fabula-story-{identifier}")
    book.set_title(title)
    book.set_language(language)
    if author:
        book.add_author(author)
    if story.description:
        book.add_metadata("DC", "description", story.description)
    for tag in story.tags:
        book.add_metadata("DC", "subject", tag)
    style = epub.EpubItem(uid="style", file_name="style/story.css", media_type="text/css", content=STYLE.encode())
    book.add_item(style)

    added: set[str] = set()

    def image_src(image_id: str, image: ImageDocument) -> str:
        name = f"images/{image_id}.png"
        if image_id not in added:
            book.add_item(epub.EpubImage(uid=f"image-{image_id}", file_name=name, media_type="image/png",
                                         content=image.png))
            added.add(image_id)
        return f"../{name}"

    title_page = epub.EpubHtml(title=title, file_name="text/title.xhtml", lang=language)
    title_page.content = (f"<h1>{html.escape(title)}</h1>"
                          + (f"<p>{html.escape(story.description)}</p>" if story.description else "") + legend())
    title_page.add_item(style)
    book.add_item(title_page)
    chapters = [title_page]
    for number, (heading, items) in enumerate(sections(blocks), start=1):
        if not items and not heading:
            continue
        name = heading or (title if number == 1 else f"Part {number}")
        chapter = epub.EpubHtml(title=name, file_name=f"text/chapter-{number}.xhtml", lang=language)
        markup = [f"<h2>{html.escape(name)}</h2>"]
        for item in items:
            if isinstance(item, Figure):
                item.image = images.get(item.image_id)
                markup.append(figure_markup(item, image_src))
            else:
                markup.append(item)
        chapter.content = "".join(markup)
        chapter.add_item(style)
        book.add_item(chapter)
        chapters.append(chapter)
    book.toc = chapters[1:]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *chapters]
    out = io.BytesIO()
    epub.write_epub(out, book)
    return out.getvalue()

"""Exporters: the standalone HTML page (parses, embeds every picture, marks AI text, loads
nothing from elsewhere, notes the built-in model's noise) and the EPUB (opens with ebooklib,
has its chapters and pictures)."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

from ebooklib import ITEM_DOCUMENT, ITEM_IMAGE, epub
from PIL import Image, PngImagePlugin

from fabula_sdk.documents.content import IllustrationBlock, Origin, TextBlock
from fabula_sdk.documents.image import ImageDocument, ImageSettings
from fabula_sdk.documents.story import Story
from fabula_sdk.exporters import NOISE_NOTE, story_epub, story_html


def png(color: tuple[int, int, int], *, builtin: bool) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("fabula", json.dumps({"model": "tiny-sd" if builtin else "anime", "builtin_model": builtin}))
    out = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


IMAGES = {"noise": ImageDocument(png((200, 10, 10), builtin=True)),
          "real": ImageDocument(png((10, 10, 200), builtin=False))}
BLOCKS = [
    TextBlock("# The Tower\nThe keeper climbed the stairs <slowly> & stopped.", Origin.PROMPT),
    TextBlock(" Below, the sea was black.\n\nA gull cried.", Origin.AI),
    IllustrationBlock("noise", "The lamp room", ImageSettings(prompt="lamp room", seed=3)),
    TextBlock("\n\n## The Sea\nShe wrote a line herself.", Origin.USER),
    TextBlock(" The AI line, edited.", Origin.EDIT),
    IllustrationBlock("real", "The harbour \"at dawn\""),
]
STORY = Story(content_id="c", title="The Lighthouse & the Sea", description="A short test.", tags=["sea"])


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_standalone_with_images_marks_and_the_noise_note():
    page = story_html(STORY, BLOCKS, IMAGES)
    parsed = Collector()
    parsed.feed(page)
    parsed.close()
    tags = [tag for tag, _ in parsed.tags]
    assert tags[0] == "html" and parsed.tags[0][1]["lang"] == "en"
    assert tags.count("main") == 1 and "h1" in tags and tags.count("h2") == 2 and tags.count("figure") == 2
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert [attrs["alt"] for attrs in images] == ["The lamp room", 'The harbour "at dawn"']
    for attrs, id in zip(images, ("noise", "real")):
        assert base64.b64decode(attrs["src"].removeprefix("data:image/png;base64,")) == IMAGES[id].png
        assert (attrs["width"], attrs["height"]) == ("64", "48")
    # Nothing loads from elsewhere: no scripts, no links, every src a data URI.
    assert "script" not in tags and "link" not in tags
    assert all(value.startswith("data:") for _, attrs in parsed.tags for key, value in attrs.items() if key == "src")
    assert "http://" not in page and "https://" not in page
    ai = [attrs for tag, attrs in parsed.tags if tag == "span" and attrs.get("data-origin") == "ai"]
    edited = [attrs for tag, attrs in parsed.tags if tag == "span" and attrs.get("data-origin") == "edit"]
    assert len(ai) >= 3 and len(edited) >= 2  # the legend's samples and the story's runs
    assert " Below, the sea was black." in page and "&lt;slowly&gt; &amp; stopped." in page
    text = "".join(parsed.text)
    assert text.count(NOISE_NOTE) == 1  # under the built-in model's picture only
    assert page.index(NOISE_NOTE) < page.index("The harbour")


def test_epub_opens_with_chapters_images_and_the_note(tmp_path):
    data = story_epub(STORY, BLOCKS, IMAGES, identifier="story-1", author="Ada")
    path = tmp_path / "story.epub"
    path.write_bytes(data)
    book = epub.read_epub(str(path))
    assert book.get_metadata("DC", "title")[0][0] == "The Lighthouse & the Sea"
    assert book.get_metadata("DC", "creator")[0][0] == "Ada"
    chapters = {item.get_name(): item.get_content().decode() for item in book.get_items_of_type(ITEM_DOCUMENT)
                if "chapter" in item.get_name()}
    assert sorted(chapters) == ["text/chapter-2.xhtml", "text/chapter-3.xhtml"]
    assert "The Tower" in chapters["text/chapter-2.xhtml"] and "The Sea" in chapters["text/chapter-3.xhtml"]
    assert NOISE_NOTE in chapters["text/chapter-2.xhtml"] and NOISE_NOTE not in chapters["text/chapter-3.xhtml"]
    assert 'data-origin="ai"' in chapters["text/chapter-2.xhtml"]
    pictures = {item.get_name(): item.get_content() for item in book.get_items_of_type(ITEM_IMAGE)}
    assert pictures == {"images/noise.png": IMAGES["noise"].png, "images/real.png": IMAGES["real"].png}
    assert [entry.title for entry in book.toc] == ["The Tower", "The Sea"]

"""Plain-text and Markdown stories. A Markdown file's first level-1 heading (`# Title`) becomes
the title and is taken out of the text; images and other markup stay as written (the text is
the story, not a rendering of it). A YAML-style front matter block (`---` ... `---`) at the top
gives `title` and `tags` (`tags: [a, b]` or `tags: a, b`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fabula_sdk.importers.checks import MAX_FILE_BYTES, MAX_NAME_CHARS, MAX_STORY_TEXT_CHARS, ImportRefused

_HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$")


@dataclass
class ImportedText:
    title: str
    text: str
    tags: list[str] = field(default_factory=list)


def _decode(data: bytes, what: str) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise ImportRefused("", f"{what} is {len(data)} bytes; at most {MAX_FILE_BYTES} are imported")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImportRefused("", f"{what} is not UTF-8 text ({error})") from None
    if "\x00" in text:
        raise ImportRefused("", f"{what} holds NUL characters: not a text file")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if len(text) > MAX_STORY_TEXT_CHARS:
        raise ImportRefused("", f"{what} has {len(text)} characters; at most {MAX_STORY_TEXT_CHARS} are imported")
    return text


def plain_text(data: bytes, *, title: str = "", what: str = "the file") -> ImportedText:
    return ImportedText(title=title, text=_decode(data, what))


def markdown(data: bytes, *, title: str = "", what: str = "the file") -> ImportedText:
    text = _decode(data, what)
    tags: list[str] = []
    lines = text.split("\n")
    if lines and lines[0].strip() == "---":
        for end in range(1, len(lines)):
            if lines[end].strip() == "---":
                for line in lines[1:end]:
                    key, _, value = line.partition(":")
                    key, value = key.strip().lower(), value.strip()
                    if key == "title" and value:
                        title = value.strip("\"'")[:MAX_NAME_CHARS]
                    elif key == "tags" and value:
                        tags = [tag.strip().strip("\"'") for tag in value.strip("[]").split(",") if tag.strip()]
                lines = lines[end + 1:]
                break
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        match = _HEADING.match(line)
        if match:
            if not title:
                title = match.group(1)[:MAX_NAME_CHARS]
            lines = lines[:index] + lines[index + 1:]
            while index < len(lines) and not lines[index].strip():
                del lines[index]
        break
    return ImportedText(title=title, text="\n".join(lines).lstrip("\n"), tags=tags)

"""The prompt languages: weighted text pieces from NovelAI's or AUTOMATIC1111's emphasis syntax.

NovelAI (the default):
- `{tag}` multiplies the weight of its text by 1.05 per brace pair (`{{tag}}` is 1.05**2).
- `[tag]` divides it by 1.05 per bracket pair.
- `(tag:1.3)` multiplies it by 1.3 (nesting multiplies). Parentheses without a `:number` are
  literal text, because anime tags contain them ("saber (fate)").
- `\\{ \\} \\[ \\] \\( \\) \\\\` are literal characters.

AUTOMATIC1111:
- `(tag)` multiplies by 1.1 per pair, `[tag]` divides by 1.1, `(tag:1.5)` multiplies by 1.5; the
  number may carry a sign or end in a dot (`(tag:+1.5)`, `(tag:1.)`). Braces are text.
- `\\( \\) \\[ \\] \\\\` are literal characters.
- `BREAK` (the capitalised word) ends the current 75-token chunk; the text after it starts a new one.
  Inside brackets too (AUTOMATIC1111 there weights its BREAK marker and so feeds the word "BREAK"
  to the encoder with a negative weight instead).
- Prompt editing (`[a:b:when]` and friends) is resolved before this parse: see `schedule.py`.

In both, every kind of bracket has its own stack, so brackets of different kinds may cross
(`{a [b} c]`): an opener applies to the text up to its own closer; an opener that is never closed
applies to the rest of the prompt (as in AUTOMATIC1111), except NovelAI's `(`, which stays text
until a `:number)` closes it; a closer that was never opened is literal text. A backslash before
any other character is kept as text (AUTOMATIC1111 drops it; a lone backslash is more likely a
path or a kaomoji than a typo).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

BRACE = 1.05
PAREN = 1.1


class Dialect(str, Enum):
    NOVELAI = "novelai"
    A1111 = "a1111"


@dataclass(frozen=True)
class Piece:
    """A run of prompt text that has one weight."""

    text: str
    weight: float


@dataclass(frozen=True)
class ChunkBreak:
    """AUTOMATIC1111's BREAK: the prompt's next token starts a new chunk."""


Parsed = Piece | ChunkBreak

_NOVELAI_TOKEN = re.compile(
    r"\\[{}\[\]()\\]|\{|\}|\[|\]|\(|:\s*(-?\d+(?:\.\d+)?|-?\.\d+)\s*\)|\)|[^\\{}\[\]():]+|[\\:]")
_A1111_TOKEN = re.compile(
    r"\\[\[\]()\\]|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|[\\:]")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


class _Pieces:
    """Pieces under construction, with one stack of open brackets per bracket kind."""

    def __init__(self) -> None:
        self.items: list[list] = []  # [text, weight] for text; [None, 1.0] for a chunk break
        self.open: dict[str, list[int]] = {}  # opener -> indices of the first piece each covers

    def text(self, text: str) -> None:
        self.items.append([text, 1.0])

    def chunk_break(self) -> None:
        self.items.append([None, 1.0])

    def push(self, opener: str) -> None:
        self.open.setdefault(opener, []).append(len(self.items))

    def is_open(self, opener: str) -> bool:
        return bool(self.open.get(opener))

    def close(self, opener: str, factor: float) -> int:
        """Close the innermost `opener`, weighting what it covered; its start index."""
        start = self.open[opener].pop()
        self.scale(start, factor)
        return start

    def scale(self, start: int, factor: float) -> None:
        for item in self.items[start:]:
            item[1] *= factor

    def result(self) -> list[Parsed]:
        merged: list[Parsed] = []
        for text, weight in self.items:
            if text is None:
                merged.append(ChunkBreak())
            elif not text:
                continue
            elif merged and isinstance(merged[-1], Piece) and abs(merged[-1].weight - weight) < 1e-9:
                merged[-1] = Piece(merged[-1].text + text, merged[-1].weight)
            else:
                merged.append(Piece(text, weight))
        return merged


def parse(prompt: str, dialect: Dialect = Dialect.NOVELAI) -> list[Parsed]:
    """The prompt as weighted pieces (and chunk breaks); neighbours with the same weight are merged."""
    return _parse_a1111(prompt) if dialect == Dialect.A1111 else _parse_novelai(prompt)


def _parse_novelai(prompt: str) -> list[Parsed]:
    pieces = _Pieces()
    for match in _NOVELAI_TOKEN.finditer(prompt):
        token = match.group(0)
        if token.startswith("\\") and len(token) == 2:
            pieces.text(token[1])
        elif token in ("{", "["):
            pieces.push(token)
        elif token == "}" and pieces.is_open("{"):
            pieces.close("{", BRACE)
        elif token == "]" and pieces.is_open("["):
            pieces.close("[", 1 / BRACE)
        elif token == "(":
            # Text until a ":number)" proves it a weight; the placeholder keeps the "(" meanwhile.
            pieces.push("(")
            pieces.text("(")
        elif match.group(1) is not None and pieces.is_open("("):
            start = pieces.close("(", float(match.group(1)))
            pieces.items[start][0] = ""  # the placeholder's "(" was syntax after all
        elif token == ")" and pieces.is_open("("):
            # A plain ")" closes a literal "(": both stay text.
            pieces.open["("].pop()
            pieces.text(token)
        else:
            pieces.text(token)
    # Unclosed braces apply to the rest of the prompt; unclosed "(" stay literal.
    for start in pieces.open.get("{", []):
        pieces.scale(start, BRACE)
    for start in pieces.open.get("[", []):
        pieces.scale(start, 1 / BRACE)
    return pieces.result()


def _parse_a1111(prompt: str) -> list[Parsed]:
    pieces = _Pieces()
    for match in _A1111_TOKEN.finditer(prompt):
        token = match.group(0)
        if token.startswith("\\") and len(token) == 2:
            pieces.text(token[1])
        elif token in ("(", "["):
            pieces.push(token)
        elif match.group(1) is not None and pieces.is_open("("):
            pieces.close("(", float(match.group(1)))
        elif token == ")" and pieces.is_open("("):
            pieces.close("(", PAREN)
        elif token == "]" and pieces.is_open("["):
            pieces.close("[", 1 / PAREN)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index:
                    pieces.chunk_break()
                pieces.text(part)
    for start in pieces.open.get("(", []):
        pieces.scale(start, PAREN)
    for start in pieces.open.get("[", []):
        pieces.scale(start, 1 / PAREN)
    return pieces.result()


def plain_text(prompt: str, dialect: Dialect = Dialect.NOVELAI) -> str:
    """The prompt's text without the emphasis syntax (a BREAK becomes a space)."""
    return "".join(item.text if isinstance(item, Piece) else " " for item in parse(prompt, dialect))


def join_tags(*parts: str) -> str:
    """Join comma-separated tag lists, skipping empty ones."""
    return ", ".join(part.strip().strip(",").strip() for part in parts if part and part.strip().strip(","))

"""The prompt language: NovelAI emphasis and explicit weights, parsed into weighted text pieces.

- `{tag}` multiplies the weight of its text by 1.05 per brace pair (`{{tag}}` is 1.05**2).
- `[tag]` divides it by 1.05 per bracket pair.
- `(tag:1.3)` multiplies it by 1.3 (nesting multiplies). Parentheses without a `:number` are
  literal text, because anime tags contain them ("saber (fate)").
- `\\{ \\} \\[ \\] \\( \\) \\\\` are literal characters.
- An opening bracket that is never closed applies to the rest of the prompt (as in AUTOMATIC1111);
  a closing bracket that was never opened is literal text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BRACE = 1.05

_TOKEN = re.compile(r"\\[{}\[\]()\\]|\{|\}|\[|\]|\(|:\s*(-?\d+(?:\.\d+)?|-?\.\d+)\s*\)|\)|[^\\{}\[\]():]+|[\\:]")


@dataclass(frozen=True)
class Piece:
    """A run of prompt text that has one weight."""

    text: str
    weight: float


def parse(prompt: str) -> list[Piece]:
    """The prompt as weighted pieces; neighbours with the same weight are merged."""
    pieces: list[list] = []  # [text, weight], mutable while brackets close
    stack: list[tuple[str, int]] = []  # (opener, index of the first piece it covers)

    def literal(text: str) -> None:
        pieces.append([text, 1.0])

    def close(opener: str, factor: float | None) -> bool:
        """Close the innermost `opener`; parentheses above it stay literal. False if none is open."""
        if not any(kind == opener for kind, _ in stack):
            return False
        while stack:
            kind, start = stack.pop()
            if kind == opener:
                if opener == "(":
                    del pieces[start]  # the "(" placeholder: its text is syntax after all
                for piece in pieces[start:]:
                    piece[1] *= factor
                return True
        return False

    for match in _TOKEN.finditer(prompt):
        token = match.group(0)
        if token.startswith("\\") and len(token) == 2:
            literal(token[1])
        elif token in "{[":
            stack.append((token, len(pieces)))
        elif token == "}":
            if not close("{", BRACE):
                literal(token)
        elif token == "]":
            if not close("[", 1 / BRACE):
                literal(token)
        elif token == "(":
            # Literal until a ":number)" proves it a weight.
            stack.append(("(", len(pieces)))
            literal("(")
        elif match.group(1) is not None:
            weight = float(match.group(1))
            if not close("(", weight):
                literal(token)
        elif token == ")":
            # A plain ")" closes a literal "(": both stay text.
            if stack and stack[-1][0] == "(":
                stack.pop()
            literal(token)
        else:
            literal(token)
    # Unclosed braces apply to the rest of the prompt; unclosed "(" stay literal.
    for kind, start in reversed(stack):
        if kind in "{[":
            factor = BRACE if kind == "{" else 1 / BRACE
            for piece in pieces[start:]:
                piece[1] *= factor
    merged: list[Piece] = []
    for text, weight in pieces:
        if not text:
            continue
        if merged and abs(merged[-1].weight - weight) < 1e-9:
            merged[-1] = Piece(merged[-1].text + text, merged[-1].weight)
        else:
            merged.append(Piece(text, weight))
    return merged


def plain_text(prompt: str) -> str:
    """The prompt's text without the emphasis syntax."""
    return "".join(piece.text for piece in parse(prompt))


def join_tags(*parts: str) -> str:
    """Join comma-separated tag lists, skipping empty ones."""
    return ", ".join(part.strip().strip(",").strip() for part in parts if part and part.strip().strip(","))

"""Cutting and inserting text in the units the context settings name: lines, sentences, tokens.

A unit *starts* at character 0, after every newline, (for sentences) after sentence-ending
punctuation and the spaces that follow it on the same line, and (for tokens) where the tokenizer
starts a token. A finer unit includes the coarser ones' starts: a line start is also a sentence
start, and both are places a token cut may use.
"""

from __future__ import annotations

import bisect
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

Offsets = Callable[[str], list[tuple[int, int]]]

# Sentence-ending punctuation (with closing quotes or brackets) and the spaces after it; a newline
# ends a line, which the newline unit already covers.
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*[ \t]+")


class TextUnit(enum.StrEnum):
    NEWLINE = "newline"
    SENTENCE = "sentence"
    TOKEN = "token"


class TrimDirection(enum.StrEnum):
    TOP = "top"
    BOTTOM = "bottom"
    NONE = "none"


def unit_starts(text: str, unit: TextUnit, offsets: Offsets) -> list[int]:
    """Sorted character positions where a unit of `unit` (or a coarser one) starts in `text`.
    A text ending with a newline has an empty last line, which starts at len(text)."""
    if not text:
        return []
    starts = {0}
    starts.update(match.end() for match in re.finditer("\n", text))
    if unit is not TextUnit.NEWLINE:
        starts.update(match.end() for match in _SENTENCE_END.finditer(text))
    if unit is TextUnit.TOKEN:
        starts.update(start for start, _ in offsets(text))
    return sorted(starts)


def coarsest_unit_at(text: str, position: int) -> TextUnit:
    """The coarsest unit that starts at `position` (for the report's "cut at a ... boundary")."""
    if position == 0 or text[position - 1] == "\n":
        return TextUnit.NEWLINE
    if any(match.end() == position for match in _SENTENCE_END.finditer(text, max(0, position - 64), position)):
        return TextUnit.SENTENCE
    return TextUnit.TOKEN


@dataclass(frozen=True)
class Trimmed:
    text: str  # the kept text, without prefix and suffix
    start: int  # where the kept text starts in the original text
    tokens: int  # tokens of prefix + kept text + suffix
    cut_at: TextUnit | None  # None when nothing was cut


def block_cuts(cuts: list[int], token_starts: list[int], block_tokens: int) -> list[int]:
    """Of the sorted `cuts`, the first at or after each multiple of `block_tokens` tokens from the
    text's start: a grid that does not move as the text grows at its end, so a text trimmed from the
    top keeps the same start, step after step, until it has grown by a block."""
    kept, boundary = [], block_tokens
    for cut in cuts:
        index = bisect.bisect_left(token_starts, cut)
        if index >= boundary:
            kept.append(cut)
            boundary = (index // block_tokens + 1) * block_tokens
    return kept


def trim_to_fit(text: str, limit: int, direction: TrimDirection, finest: TextUnit,
                count: Callable[[str], int], offsets: Offsets, affix_tokens: int, whole: int,
                block_tokens: int = 0) -> Trimmed | None:
    """The longest part of `text` that fits `limit` tokens, as counted by `count` (which includes
    the prefix and suffix), cut at a start of `finest` or a coarser unit and removed from the
    `direction` end; None when not even the shortest cut fits (or direction NONE forbids cutting).
    `whole` is `count(text)`, which the caller has already measured. With `block_tokens`, a cut
    from the top is one of `block_cuts` (whole blocks), not any unit start.

    The search estimates each cut's count from the text's token offsets (plus `affix_tokens`),
    picks the longest cut the estimate allows and confirms it with `count`; only when joining
    changed the count does it fall back to a binary search with real counts."""
    if whole <= limit:
        return Trimmed(text, 0, whole, None)
    if direction is TrimDirection.NONE or limit <= 0:
        return None
    spans = offsets(text)
    token_starts = [start for start, _ in spans]
    token_ends = [end for _, end in spans]
    cuts = [cut for cut in unit_starts(text, finest, lambda _text: spans) if 0 < cut < len(text)]
    if direction is TrimDirection.TOP and block_tokens > 0:
        cuts = block_cuts(cuts, token_starts, block_tokens)
    if direction is TrimDirection.TOP:
        # Longest kept text first: the earliest cut.
        candidates = [(cut, cut, text[cut:],
                       affix_tokens + len(token_starts) - bisect.bisect_left(token_starts, cut)) for cut in cuts]
    else:
        candidates = [(cut, 0, text[:cut].rstrip(), affix_tokens + bisect.bisect_right(token_ends, cut))
                      for cut in reversed(cuts)]
    # (cut position, where the kept text starts, the kept text, its estimated count)
    candidates = [candidate for candidate in candidates if candidate[2].strip()]
    first = next((i for i, candidate in enumerate(candidates) if candidate[3] <= limit), None)
    if first is None:
        return None
    found: tuple[int, int] | None = None  # (index in candidates, its real count)
    tokens = count(candidates[first][2])
    if tokens <= limit:
        found = (first, tokens)
    else:
        # The estimate was optimistic (joining changed the count): binary search for the first
        # cut whose real count fits; counts shrink along `candidates`.
        low, high = first + 1, len(candidates)
        while low < high:
            middle = (low + high) // 2
            tokens = count(candidates[middle][2])
            if tokens <= limit:
                found, high = (middle, tokens), middle
            else:
                low = middle + 1
    if found is None:
        return None
    cut, start, piece, _ = candidates[found[0]]
    return Trimmed(piece, start, found[1], coarsest_unit_at(text, cut))


@dataclass(frozen=True)
class Insertion:
    context: str  # the context with the text inserted
    at: int  # the character where the inserted characters begin
    length: int  # how many characters were inserted (separator included)
    text_at: int  # where the inserted part's own text begins


def boundary_positions(context: str, unit: TextUnit, offsets: Offsets) -> list[int]:
    """Positions an insertion in `unit` may use: each unit start and the very end."""
    return unit_starts(context, unit, offsets) + [len(context)]


def boundary_index(count: int, position: int, anchor_unit: int | None = None) -> int:
    """Which of `count + 1` boundaries (0 = top, count = bottom) `position` names: >= 0 counts from
    the top, < 0 from the bottom (-1 = the bottom). Relative to a key's unit `anchor_unit`: -1 is
    just before that unit, 0 just after it, +n n units further down, -n n-1 units further up."""
    if anchor_unit is not None:
        index = anchor_unit + 1 + position
    else:
        index = position if position >= 0 else count + 1 + position
    return min(max(index, 0), count)


def insert(context: str, text: str, unit: TextUnit, position: int, offsets: Offsets,
           anchor: int | None = None) -> Insertion:
    """`text` inserted into `context` at `position` counted in `unit` (from the unit holding
    character `anchor` when given). In newline units the text becomes lines of its own; in
    sentence and token units it goes in as is, at the unit's first character."""
    if not context:
        return Insertion(text, 0, len(text), 0)
    positions = boundary_positions(context, unit, offsets)
    units = len(positions) - 1
    anchor_unit = None if anchor is None else max(bisect.bisect_right(positions[:-1], anchor) - 1, 0)
    index = boundary_index(units, position, anchor_unit)
    at = positions[index]
    if unit is TextUnit.NEWLINE:
        if index == units:
            # At the very end: a new last line.
            return Insertion(context + "\n" + text, len(context), len(text) + 1, len(context) + 1)
        return Insertion(context[:at] + text + "\n" + context[at:], at, len(text) + 1, at)
    return Insertion(context[:at] + text + context[at:], at, len(text), at)

"""The storytelling context builder: story + memory + author's note + lorebook → one prompt that
fits the budget, and a report of what went in and why.

Steps (each its own function):
1. `check_inputs`: sizes, regular expressions, depths — before any tokenizing.
2. `triggered_entries`: which lorebook entries fire (always-on, or a key found in the scanned end
   of the story; literal or regex, case-sensitive or not).
3. Budget: memory and the author's note are placed first (trimmed only if they alone exceed the
   budget), then triggered entries by descending insertion order, each cut to its own token
   budget, while they fit; the story gets what is left.
4. `trim_story`: the story keeps its newest part, cut on a newline or sentence boundary (mid-
   sentence only when a single sentence is longer than the room).
5. `assemble`: memory, then entries placed before the story, then the story's lines with entries
   and the author's note inserted the configured number of lines from its end. The result is
   tokenized once more and, should joining have changed the count, the story is trimmed further.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

# Lorebook keys use the `regex` package rather than `re` for its per-search timeout: a user's
# pattern with catastrophic backtracking must end in a clear error, not a stalled worker.
import regex

from services.toolkit.errors import InvalidArgument

DEFAULT_AUTHORS_NOTE_DEPTH = 3
MAX_LOREBOOK_ENTRIES = 512
MAX_KEYS_PER_ENTRY = 64
MAX_KEY_CHARS = 256
REGEX_TIMEOUT_S = 0.05
MAX_PART_CHARS = 50_000  # memory, author's note, each lorebook entry's text
# A boundary the story may be cut after: a newline, or sentence-ending punctuation (with closing
# quotes or brackets) followed by whitespace.
_BOUNDARY = re.compile(r"\n|[.!?…][\"'”’)\]]*\s")


@dataclass(frozen=True)
class LoreEntry:
    name: str
    text: str
    keys: tuple[str, ...]
    regex_keys: bool = False
    case_sensitive: bool = False
    scan_depth_chars: int = 0
    always_on: bool = False
    insertion_order: int = 0
    insertion_position: int = 0
    token_budget: int = 0
    disabled: bool = False
    patterns: tuple[regex.Pattern[str], ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class StoryContext:
    story: str
    memory: str = ""
    authors_note: str = ""
    authors_note_depth: int = DEFAULT_AUTHORS_NOTE_DEPTH
    lorebook: tuple[LoreEntry, ...] = ()
    max_context_tokens: int = 0


@dataclass
class ReportEntry:
    source: str
    included: bool
    reason: str
    tokens: int = 0
    trimmed_tokens: int = 0


@dataclass
class BuiltContext:
    prompt: str
    prompt_ids: list[int]
    budget: int
    entries: list[ReportEntry]


# --- 1. inputs ---------------------------------------------------------------------------------


def check_inputs(context: StoryContext, max_story_chars: int, prefix: str = "spec.context.") -> StoryContext:
    """The context with its sizes checked, its keys compiled and every entry named (an unnamed
    one after its place in the lorebook, for the report)."""
    if len(context.story) > max_story_chars:
        raise InvalidArgument(f"{prefix}story", context.story, f"at most {max_story_chars} characters")
    for name in ("memory", "authors_note"):
        if len(getattr(context, name)) > MAX_PART_CHARS:
            raise InvalidArgument(f"{prefix}{name}", getattr(context, name), f"at most {MAX_PART_CHARS} characters")
    if context.authors_note_depth > 10_000:
        raise InvalidArgument(f"{prefix}authors_note_depth", context.authors_note_depth, "at most 10000 lines")
    if len(context.lorebook) > MAX_LOREBOOK_ENTRIES:
        raise InvalidArgument(f"{prefix}lorebook", len(context.lorebook), f"at most {MAX_LOREBOOK_ENTRIES} entries")
    checked = []
    for index, entry in enumerate(context.lorebook):
        where = f"{prefix}lorebook[{index}]"
        if len(entry.text) > MAX_PART_CHARS:
            raise InvalidArgument(f"{where}.text", entry.text, f"at most {MAX_PART_CHARS} characters")
        if len(entry.keys) > MAX_KEYS_PER_ENTRY:
            raise InvalidArgument(f"{where}.keys", len(entry.keys), f"at most {MAX_KEYS_PER_ENTRY} keys")
        if not entry.keys and not entry.always_on and not entry.disabled:
            raise InvalidArgument(f"{where}.keys", [], "an entry that is not always on needs at least one key")
        patterns = []
        for key_index, key in enumerate(entry.keys):
            key_where = f"{where}.keys[{key_index}]"
            if not key or len(key) > MAX_KEY_CHARS:
                raise InvalidArgument(key_where, key, f"must be 1 to {MAX_KEY_CHARS} characters")
            flags = regex.VERSION0 | (0 if entry.case_sensitive else regex.IGNORECASE)
            source = key if entry.regex_keys else regex.escape(key)
            try:
                patterns.append(regex.compile(source, flags))
            except regex.error as error:
                raise InvalidArgument(key_where, key, f"invalid regular expression: {error}") from None
        checked.append(replace(entry, name=entry.name or f"entry {index}", patterns=tuple(patterns)))
    return replace(context, lorebook=tuple(checked))


# --- 2. lorebook triggers ----------------------------------------------------------------------


def triggered_entries(context: StoryContext) -> tuple[list[tuple[LoreEntry, str]], list[ReportEntry]]:
    """(entry, why) for each entry that fires, and report lines for those that do not."""
    fired, report = [], []
    for index, entry in enumerate(context.lorebook):
        source = f"lorebook:{entry.name}"
        if entry.disabled:
            report.append(ReportEntry(source, False, "disabled"))
            continue
        if entry.always_on:
            fired.append((entry, "always on"))
            continue
        scanned = context.story[-entry.scan_depth_chars:] if entry.scan_depth_chars else context.story
        hit = _first_matching_key(entry, index, scanned)
        if hit is None:
            depth = f"last {entry.scan_depth_chars} characters" if entry.scan_depth_chars else "story"
            report.append(ReportEntry(source, False, f"no key matched in the {depth}"))
        else:
            fired.append((entry, f"key {hit!r} matched"))
    return fired, report


def _first_matching_key(entry: LoreEntry, index: int, scanned: str) -> str | None:
    for key_index, (key, pattern) in enumerate(zip(entry.keys, entry.patterns)):
        try:
            if pattern.search(scanned, timeout=REGEX_TIMEOUT_S):
                return key
        except TimeoutError:
            # A user's regex with catastrophic backtracking must not hold a worker thread.
            raise InvalidArgument(f"spec.context.lorebook[{index}].keys[{key_index}]", key,
                                  f"regular expression took longer than {REGEX_TIMEOUT_S * 1000:.0f} ms "
                                  "to scan the story; simplify it") from None
    return None


# --- 3-5. budget, trimming, assembly -----------------------------------------------------------


class ContextBuilder:
    """Builds prompts for one model (its tokenizer and context window)."""

    def __init__(self, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
                 tokenize_with_offsets: Callable[[str], list[tuple[int, int]]], context_window: int) -> None:
        self.encode = encode
        self.decode = decode
        self.offsets = tokenize_with_offsets
        self.context_window = context_window

    def budget_for(self, context: StoryContext, max_new_tokens: int, prefix: str = "spec.context.") -> int:
        room = self.context_window - max_new_tokens
        if room < 1:
            raise InvalidArgument("spec.max_new_tokens", max_new_tokens,
                                  f"leaves no room for a prompt in the {self.context_window}-token context window")
        if context.max_context_tokens:
            if context.max_context_tokens > room:
                raise InvalidArgument(f"{prefix}max_context_tokens", context.max_context_tokens,
                                      f"must be at most {room} (context window {self.context_window} "
                                      f"minus max_new_tokens {max_new_tokens})")
            return context.max_context_tokens
        return room

    def _fit(self, text: str, room: int) -> tuple[str, int, int]:
        """Cut `text` to at most `room` tokens from its end; returns (text, tokens, trimmed)."""
        ids = self.encode(text)
        if len(ids) <= room:
            return text, len(ids), 0
        kept = self.decode(ids[:room]) if room > 0 else ""
        return kept, len(self.encode(kept)), len(ids) - room

    def build(self, context: StoryContext, max_new_tokens: int) -> BuiltContext:
        budget = self.budget_for(context, max_new_tokens)
        report: list[ReportEntry] = []
        room = budget

        memory, memory_tokens, memory_trimmed = self._fit(context.memory, room)
        room -= memory_tokens
        if context.memory:
            report.append(ReportEntry("memory", bool(memory), "always included" if not memory_trimmed
                                      else "trimmed: longer than the whole budget", memory_tokens, memory_trimmed))
        note, note_tokens, note_trimmed = self._fit(context.authors_note, room)
        room -= note_tokens
        if context.authors_note:
            report.append(ReportEntry("authors_note", bool(note),
                                      f"inserted {context.authors_note_depth} lines from the end" if not note_trimmed
                                      else "trimmed: no room left in the budget", note_tokens, note_trimmed))

        fired, not_fired = triggered_entries(context)
        placed: list[tuple[LoreEntry, str]] = []
        for entry, why in sorted(fired, key=lambda item: -item[0].insertion_order):
            source = f"lorebook:{entry.name}"
            text, tokens, trimmed = self._fit(entry.text, entry.token_budget or len(self.encode(entry.text)))
            if tokens > room:
                report.append(ReportEntry(source, False, f"{why}, but did not fit the budget "
                                          f"({tokens} tokens, {room} left)", 0, tokens + trimmed))
                continue
            room -= tokens
            placed.append((entry, text))
            reason = why + (f"; cut to its token budget of {entry.token_budget}" if trimmed else "")
            report.append(ReportEntry(source, True, reason, tokens, trimmed))
        report.extend(not_fired)

        # The story gets the rest; joining parts with newlines can change counts slightly, so the
        # assembled prompt is measured and the story trimmed again until it fits.
        story_room = room
        for _ in range(8):
            story, story_tokens, story_trimmed, cut_mid_sentence = self.trim_story(context.story, story_room)
            prompt = assemble(memory, note, context.authors_note_depth, placed, story)
            prompt_ids = self.encode(prompt)
            if len(prompt_ids) <= budget or story_room <= 0:
                break
            story_room -= len(prompt_ids) - budget
        if len(prompt_ids) > budget:
            # Only possible when memory, note and entries alone overflow after joining.
            prompt_ids = prompt_ids[-budget:]
            prompt = self.decode(prompt_ids)
        if story_trimmed:
            reason = ("trimmed from the oldest side" +
                      (" mid-sentence: no sentence or line boundary fit" if cut_mid_sentence
                       else " at a sentence/line boundary"))
        else:
            reason = "included whole"
        report.append(ReportEntry("story", bool(story), reason if context.story else "empty", story_tokens,
                                  story_trimmed))
        return BuiltContext(prompt=prompt, prompt_ids=prompt_ids, budget=budget, entries=report)

    def trim_story(self, story: str, room: int) -> tuple[str, int, int, bool]:
        """The newest part of `story` within `room` tokens, cut at a boundary.
        Returns (text, its tokens, tokens trimmed, whether it had to cut mid-sentence)."""
        offsets = self.offsets(story)
        total = len(offsets)
        if total <= room:
            return story, total, 0, False
        if room <= 0:
            return "", 0, total, False
        # The first character the kept part may start at: the start of the room-th last token.
        earliest = offsets[total - room][0]
        boundary = None
        for match in _BOUNDARY.finditer(story, earliest):
            boundary = match.end()
            # Skip whitespace after the boundary: a story part does not start with a space.
            while boundary < len(story) and story[boundary] in " \t":
                boundary += 1
            break
        if boundary is not None and boundary < len(story):
            kept = story[boundary:]
            mid_sentence = False
        else:
            kept = story[earliest:]
            mid_sentence = True
        starts = [start for start, _ in offsets]
        kept_tokens = total - bisect.bisect_left(starts, len(story) - len(kept))
        return kept, kept_tokens, total - kept_tokens, mid_sentence


def assemble(memory: str, note: str, note_depth: int, entries: list[tuple[LoreEntry, str]], story: str) -> str:
    """Memory first, then entries placed before the story, then the story's lines with the
    entries placed inside it and the author's note `note_depth` lines from its end."""
    lines = story.split("\n") if story else []
    # Insertions keyed by how many lines from the end they go; entries with a higher insertion
    # order go later (closer to the end), the author's note last of all at its depth.
    inserts: dict[int, list[tuple[int, str]]] = {}
    top: list[tuple[int, str]] = []
    for entry, text in entries:
        if entry.insertion_position >= 0:
            top.append((entry.insertion_order, text))
        else:
            inserts.setdefault(-entry.insertion_position, []).append((entry.insertion_order, text))
    if note:
        inserts.setdefault(note_depth, []).append((1 << 31, note))
    body: list[str] = []
    for index, line in enumerate(lines):
        from_end = len(lines) - index
        for _, text in sorted(inserts.pop(from_end, []), key=lambda item: item[0]):
            body.append(text)
        body.append(line)
    # Depths beyond the story's start go before it; depth 0 goes after it.
    before = [text for depth in sorted(inserts, reverse=True) if depth > len(lines)
              for _, text in sorted(inserts[depth], key=lambda item: item[0])]
    after = [text for _, text in sorted(inserts.get(0, []), key=lambda item: item[0])]
    parts = ([memory] if memory else []) + [text for _, text in sorted(top, key=lambda item: item[0])]
    parts += before + body + after
    return "\n".join(parts)

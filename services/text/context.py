"""The storytelling context builder: story + memory + author's note + lorebook → one prompt that
fits the budget, and a report of what went in and why. docs/text.md ("Context building") states
the rules a client can predict the prompt from; in short:

1. `check_inputs` (story_context.py): sizes, references, regular expressions; every part's
   settings resolved.
2. `activate` (lorebook.py): which lorebook entries are in play, and why, within the request's
   limits on keys, scanned text, matching time and deadline.
3. Sub-contexts: a category with `create_subcontext` assembles its activated entries into one text
   first (steps 4-5 on those entries alone), which then takes part as one part.
4. Budget, in descending `budget_priority`: every part's reserved tokens are set aside first; then
   each part is trimmed to the smaller of its `token_budget` and the room left (the budget minus
   what is placed and what other parts still hold reserved), in its trim direction, never finer
   than its maximum trim type.
5. Insertion, in the same order (key-relative entries last): each part goes into the context
   built so far at its insertion position, counted in its insertion type's units.
The assembled prompt is tokenized once more; should joining have raised the count past the
budget, steps 4-5 run again with the budget lowered by the excess.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from services.text.context_units import Trimmed, insert, trim_to_fit
from services.text.lorebook import Activation, KeyMatching, activate
from services.text.story_context import (DEFAULT_AUTHORS_NOTE_DEPTH, MAX_KEY_CHARS, MAX_KEYS_PER_ENTRY,
                                         MAX_LOREBOOK_ENTRIES, MAX_PART_CHARS, ContextConfig, LorebookLimits,
                                         LoreCategory, LoreEntry, StoryContext, check_inputs)
from services.toolkit.errors import InvalidArgument

__all__ = ["BuiltContext", "ContextBuilder", "ContextConfig", "DEFAULT_AUTHORS_NOTE_DEPTH", "KeyMatching",
           "LoreCategory", "LoreEntry", "LorebookLimits", "MAX_KEYS_PER_ENTRY", "MAX_KEY_CHARS",
           "MAX_LOREBOOK_ENTRIES", "MAX_PART_CHARS", "ReportEntry", "StoryContext", "check_inputs"]

# Rounds of re-assembly when joining parts raised the token count past the budget.
_REASSEMBLY_ROUNDS = 8


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


@dataclass
class Part:
    """One piece of the context as the budget and insertion steps see it."""

    source: str  # its name in the report
    text: str
    config: ContextConfig  # resolved: no field is None
    activation: str = ""  # why a lorebook entry or sub-context is in play
    key_at: int | None = None  # a key-relative entry: where its key starts in the story
    is_story: bool = False
    entry_index: int | None = None  # a lorebook entry: its place in the lorebook
    members: list[ReportEntry] = field(default_factory=list)  # a sub-context's entries' rows
    member_parts: list[Part] = field(default_factory=list)  # ... and the entries, in the same order


@dataclass
class Placement:
    part: Part
    row: ReportEntry
    kept: Trimmed | None = None  # None: left out


class ContextBuilder:
    """Builds prompts for one model (its tokenizer and context window)."""

    def __init__(self, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
                 tokenize_with_offsets: Callable[[str], list[tuple[int, int]]], context_window: int,
                 story_block_tokens: int = 0) -> None:
        self.encode = encode
        self.decode = decode
        self.offsets = tokenize_with_offsets
        self.context_window = context_window
        # The story is trimmed from the top in whole blocks of this many tokens (0: at the first
        # unit start that fits), so that its start, and the prompt's prefix up to the end of the
        # story's kept part, stay the same from one continuation to the next (prefix reuse).
        self.story_block_tokens = story_block_tokens

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

    def count(self, text: str) -> int:
        return len(self.encode(text)) if text else 0

    def build(self, context: StoryContext, max_new_tokens: int, matching: KeyMatching | None = None) -> BuiltContext:
        """`context` must have passed `check_inputs` (its settings resolved, keys compiled);
        `matching` bounds its key searches (lorebook.py)."""
        budget = self.budget_for(context, max_new_tokens)
        active, inactive = activate(context, matching)
        parts, subcontext_rows = self._parts(context, active, budget)
        effective = budget
        for _ in range(_REASSEMBLY_ROUNDS):
            prompt, placements = self.assemble(parts, effective)
            prompt_ids = self.encode(prompt)
            if len(prompt_ids) <= budget or effective <= 0:
                break
            effective = max(effective - (len(prompt_ids) - budget), 0)
        if len(prompt_ids) > budget:
            # Only possible when a tokenizer's joins keep adding tokens round after round.
            prompt_ids = prompt_ids[-budget:]
            prompt = self.decode(prompt_ids)
        return BuiltContext(prompt=prompt, prompt_ids=prompt_ids, budget=budget,
                            entries=self._report(context, placements, inactive, subcontext_rows))

    # --- parts -------------------------------------------------------------------------------

    def _parts(self, context: StoryContext, active: dict[int, Activation],
               budget: int) -> tuple[list[Part], list[ReportEntry]]:
        """The parts in tie order (memory, lorebook entries and sub-contexts in lorebook order,
        story, author's note), and report rows of sub-contexts with no activated entry."""
        subcontexts = {category.id: category for category in context.lorebook_categories
                       if category.create_subcontext and category.enabled}
        members: dict[str, list[Part]] = {category_id: [] for category_id in subcontexts}
        subcontext_parts: dict[str, Part] = {}
        parts = [Part("memory", context.memory, context.memory_config)]
        for index, entry in enumerate(context.lorebook):
            if index not in active:
                continue
            activation = active[index]
            part = Part(f"lorebook:{entry.name}", entry.text, entry.context_config, activation.reason,
                        activation.key_at if entry.key_relative else None, entry_index=index)
            if entry.category in subcontexts:
                if not members[entry.category]:
                    # The sub-context takes its place among the parts at its first entry.
                    category = subcontexts[entry.category]
                    subcontext_parts[category.id] = Part(f"subcontext:{category.name}", "", category.subcontext_config)
                    parts.append(subcontext_parts[category.id])
                # Inside a sub-context there is no story to count from.
                part.key_at = None
                members[entry.category].append(part)
            else:
                parts.append(part)
        parts.append(Part("story", context.story, context.story_config, is_story=True))
        parts.append(Part("authors_note", context.authors_note, context.authors_note_config))
        empty_rows = []
        for category_id, category in subcontexts.items():
            source = f"subcontext:{category.name}"
            if not members[category_id]:
                empty_rows.append(ReportEntry(source, False, "no entry of the category activated"))
                continue
            sub_budget = category.subcontext_config.token_budget or budget
            text, placements = self.assemble(members[category_id], sub_budget)
            part = subcontext_parts[category_id]
            part.text = text
            part.activation = (f"{len(members[category_id])} activated "
                               f"entr{'y' if len(members[category_id]) == 1 else 'ies'} of category "
                               f"{category.name!r}")
            part.members = [placement.row for placement in placements]
            part.member_parts = [placement.part for placement in placements]
        return parts, empty_rows

    # --- budget and insertion ----------------------------------------------------------------

    def assemble(self, parts: list[Part], budget: int) -> tuple[str, list[Placement]]:
        """Budget and insertion (steps 4 and 5) for `parts` within `budget` tokens: the text, and
        what became of each part."""
        order = sorted(range(len(parts)), key=lambda i: (-parts[i].config.budget_priority, i))
        placements = self._budget([parts[i] for i in order], budget)
        return self._insert(placements), placements

    def _budget(self, parts: list[Part], budget: int) -> list[Placement]:
        wrapped = [part.config.prefix + part.text + part.config.suffix if part.text else "" for part in parts]
        full = [self.count(text) for text in wrapped]
        reserved, total = [], 0
        for part, tokens in zip(parts, full):
            cap = min(tokens, part.config.token_budget) if part.config.token_budget else tokens
            reserved.append(min(part.config.reserved_tokens, cap, budget - total))
            total += reserved[-1]
        used, outstanding = 0, total
        placements = []
        for part, tokens, own_reserve in zip(parts, full, reserved):
            outstanding -= own_reserve
            row = ReportEntry(part.source, False, "")
            placements.append(Placement(part, row))
            if not part.text:
                row.reason = "empty"
                continue
            room = budget - used - outstanding
            limit = min(room, part.config.token_budget) if part.config.token_budget else room
            config = part.config
            affix_tokens = self.count(config.prefix) + self.count(config.suffix)
            kept = trim_to_fit(part.text, limit, config.trim_direction, config.maximum_trim_type,
                               lambda text, c=config: self.count(c.prefix + text + c.suffix), self.offsets,
                               affix_tokens, tokens, self.story_block_tokens if part.is_story else 0)
            lead = f"{part.activation}; " if part.activation else ""
            if kept is None:
                row.reason, row.trimmed_tokens = f"{lead}left out: budget", tokens
                continue
            used += kept.tokens
            placements[-1].kept = kept
            row.included, row.tokens, row.trimmed_tokens = True, kept.tokens, max(tokens - kept.tokens, 0)
            if kept.cut_at is None:
                row.reason = part.activation or "included whole"
            else:
                row.reason = f"{lead}trimmed to budget at a {kept.cut_at} boundary"
        return placements

    def _insert(self, placements: list[Placement]) -> str:
        """The placed parts inserted in priority order, key-relative entries after the rest (their
        key must be in the context to count from)."""
        placed = [p for p in placements if p.kept is not None]
        placed = [p for p in placed if p.part.key_at is None] + [p for p in placed if p.part.key_at is not None]
        context = ""
        anchors: dict[int, int] = {}  # id(part) → where its key now is in the context
        for placement in placed:
            part, kept, config = placement.part, placement.kept, placement.part.config
            assert kept is not None
            anchor = anchors.get(id(part))
            if part.key_at is not None and anchor is None:
                placement.row.reason += "; its key is not in the placed story, so placed by position"
            inserted = insert(context, config.prefix + kept.text + config.suffix, config.insertion_type,
                              config.insertion_position, self.offsets, anchor)
            for key, position in anchors.items():
                if position >= inserted.at:
                    anchors[key] = position + inserted.length
            if part.is_story:
                story_at = inserted.text_at + len(config.prefix)
                for other in placed:
                    if other.part.key_at is not None:
                        in_kept = other.part.key_at - kept.start
                        if 0 <= in_kept < len(kept.text):
                            anchors[id(other.part)] = story_at + in_kept
            context = inserted.context
        return context

    # --- report ------------------------------------------------------------------------------

    def _report(self, context: StoryContext, placements: list[Placement], inactive: dict[int, str],
                empty_subcontexts: list[ReportEntry]) -> list[ReportEntry]:
        """One row per part: memory, author's note, story, each lorebook entry (in lorebook order),
        each sub-context."""
        rows = {placement.row.source: placement.row for placement in placements if placement.part.entry_index is None}
        report = [rows[source] for source in ("memory", "authors_note", "story")]
        entry_rows = {placement.part.entry_index: placement.row for placement in placements
                      if placement.part.entry_index is not None}
        subcontext_rows = []
        for placement in placements:
            if placement.part.members:
                subcontext_rows.append(placement.row)
                for member_part, member in zip(placement.part.member_parts, placement.part.members):
                    if placement.kept is None and member.included:
                        member.included = False
                        member.reason += "; left out with its sub-context"
                        member.trimmed_tokens += member.tokens
                        member.tokens = 0
                    entry_rows[member_part.entry_index] = member
        for index, entry in enumerate(context.lorebook):
            report.append(ReportEntry(f"lorebook:{entry.name}", False, inactive[index]) if index in inactive
                          else entry_rows[index])
        return report + subcontext_rows + empty_subcontexts

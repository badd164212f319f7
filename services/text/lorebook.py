"""Which lorebook entries are activated, and why: disabled ones and those of a disabled category
never; always-on ones always; the rest when a key matches in the scanned end of the story, or —
for entries with cascading activation — in the text of another activated entry, repeated until
nothing new activates (at most `MAX_CASCADE_ROUNDS` rounds).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from services.text.story_context import LoreEntry, StoryContext
from services.toolkit.errors import InvalidArgument

REGEX_TIMEOUT_S = 0.05
# Each round scans only the entries activated in the round before, so a chain of cascades longer
# than this stops here rather than running on (a cycle ends by itself: an active entry stays so).
MAX_CASCADE_ROUNDS = 16
# Between activated entries' texts when they are scanned together, so one key cannot match
# across two entries' words.
_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Activation:
    reason: str  # "always on", "key 'dragon' matched", "cascade from entry 'Castle'"
    key_at: int | None = None  # key-relative entries: where the last key match starts in the story


def activate(context: StoryContext, prefix: str = "spec.context.") -> tuple[dict[int, Activation], dict[int, str]]:
    """The activated entries by their index in the lorebook, and why each other entry was not."""
    enabled = {category.id: category.enabled for category in context.lorebook_categories}
    active: dict[int, Activation] = {}
    inactive: dict[int, str] = {}
    pending: list[int] = []
    for index, entry in enumerate(context.lorebook):
        if entry.disabled:
            inactive[index] = "disabled"
            continue
        if entry.category and not enabled.get(entry.category, True):
            inactive[index] = "category disabled"
            continue
        scanned_from = max(len(context.story) - entry.scan_depth_chars, 0) if entry.scan_depth_chars else 0
        scanned = context.story[scanned_from:]
        key_at = None
        if entry.key_relative:
            last = _last_match(entry, index, scanned, prefix)
            key_at = None if last is None else scanned_from + last
        if entry.always_on:
            active[index] = Activation("always on", key_at)
            continue
        hit = _first_matching_key(entry, index, scanned, prefix)
        if hit is not None:
            active[index] = Activation(f"key {hit!r} matched", key_at)
            continue
        where = f"last {entry.scan_depth_chars} characters" if entry.scan_depth_chars else "story"
        inactive[index] = f"no key matched in the {where}" + (
            " or in activated entries" if entry.cascading_activation else "")
        pending.append(index)
    _cascade(context, active, inactive, [i for i in pending if context.lorebook[i].cascading_activation], prefix)
    return active, inactive


def _cascade(context: StoryContext, active: dict[int, Activation], inactive: dict[int, str],
             waiting: list[int], prefix: str) -> None:
    """Activate waiting entries whose keys match in the text of entries activated the round before."""
    scanned_owners = list(active)
    for _ in range(MAX_CASCADE_ROUNDS):
        if not scanned_owners or not waiting:
            return
        # The texts activated last round, joined; `starts` maps a match back to its entry.
        starts, position = [], 0
        for owner in scanned_owners:
            starts.append(position)
            position += len(context.lorebook[owner].text) + len(_SEPARATOR)
        scanned = _SEPARATOR.join(context.lorebook[owner].text for owner in scanned_owners)
        activated_now = []
        for index in waiting:
            found = _first_match(context.lorebook[index], index, scanned, prefix)
            if found is not None:
                source = scanned_owners[bisect.bisect_right(starts, found) - 1]
                active[index] = Activation(f"cascade from entry {context.lorebook[source].name!r}")
                inactive.pop(index)
                activated_now.append(index)
        waiting = [index for index in waiting if index not in active]
        scanned_owners = activated_now


def _search_error(index: int, key_index: int, key: str, prefix: str) -> InvalidArgument:
    # A user's regex with catastrophic backtracking must not hold a worker thread.
    return InvalidArgument(f"{prefix}lorebook[{index}].keys[{key_index}]", key,
                           f"regular expression took longer than {REGEX_TIMEOUT_S * 1000:.0f} ms "
                           "to scan the story; simplify it")


def _first_matching_key(entry: LoreEntry, index: int, scanned: str, prefix: str) -> str | None:
    """The first of the entry's keys (in its order) that occurs in `scanned`."""
    for key_index, (key, pattern) in enumerate(zip(entry.keys, entry.patterns)):
        try:
            if pattern.search(scanned, timeout=REGEX_TIMEOUT_S):
                return key
        except TimeoutError:
            raise _search_error(index, key_index, key, prefix) from None
    return None


def _first_match(entry: LoreEntry, index: int, scanned: str, prefix: str) -> int | None:
    """Where the earliest match of any of the entry's keys starts in `scanned`."""
    earliest = None
    for key_index, (key, pattern) in enumerate(zip(entry.keys, entry.patterns)):
        try:
            match = pattern.search(scanned, timeout=REGEX_TIMEOUT_S)
        except TimeoutError:
            raise _search_error(index, key_index, key, prefix) from None
        if match and (earliest is None or match.start() < earliest):
            earliest = match.start()
    return earliest


def _last_match(entry: LoreEntry, index: int, scanned: str, prefix: str) -> int | None:
    """Where the latest match of any of the entry's keys starts in `scanned`."""
    latest = None
    for key_index, (key, pattern) in enumerate(zip(entry.keys, entry.patterns)):
        try:
            for match in pattern.finditer(scanned, timeout=REGEX_TIMEOUT_S):
                if latest is None or match.start() > latest:
                    latest = match.start()
        except TimeoutError:
            raise _search_error(index, key_index, key, prefix) from None
    return latest

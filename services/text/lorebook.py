"""Which lorebook entries are activated, and why: disabled ones and those of a disabled category
never; always-on ones always; the rest when a key matches in the scanned end of the story, or —
for entries with cascading activation — in the text of another activated entry, repeated until
nothing new activates (at most `MAX_CASCADE_ROUNDS` rounds).

Matching is bounded per request, not only per key (the per-entry limits alone allow 512 entries of
64 keys each). `LorebookLimits` caps the keys and key characters in all and the text the
regular-expression keys would scan in all, checked before any key is compiled or searched
(`story_context.check_key_totals`, `check_scan_totals`); `KeyMatching` then runs every search with a time limit
that really stops it (the `regex` package's `timeout=`, with the GIL released while it runs), the
smallest of the per-search limit, what is left of the request's matching time and what is left
until its deadline, and stops between searches once the request is cancelled.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import regex

from services.text.story_context import LorebookLimits, LoreEntry, StoryContext
from services.toolkit.errors import Cancelled, DeadlineExceeded, InvalidArgument

# Each round scans only the entries activated in the round before, so a chain of cascades longer
# than this stops here rather than running on (a cycle ends by itself: an active entry stays so).
MAX_CASCADE_ROUNDS = 16
# Between activated entries' texts when they are scanned together, so one key cannot match
# across two entries' words.
_SEPARATOR = "\n\n"

T = TypeVar("T")


class KeyMatching:
    """One request's key searches: each limited in time, all of them limited together, stopped by
    the request's deadline (a `time.monotonic()` value) or by `cancel()` from another thread.

    The `regex` package measures a search's time limit in the process's CPU time, which every
    thread advances: while the model's threads are busy a search is stopped sooner, never later.
    The request's total is counted in this thread's CPU time, so other work on the machine does
    not use it up.
    """

    def __init__(self, limits: LorebookLimits = LorebookLimits(), deadline: float | None = None,
                 prefix: str = "spec.context.") -> None:
        self.limits = limits
        self.deadline = deadline
        self.prefix = prefix
        self.spent_s = 0.0
        self.searches = 0
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop at the next search (callable from any thread)."""
        self._cancelled.set()

    def run(self, search: Callable[[float], T], entry_index: int, key_index: int, key: str) -> T:
        """`search(timeout)` under the smallest limit that applies; a limit that ends it becomes
        the error that names it."""
        if self._cancelled.is_set():
            raise Cancelled("the request was cancelled while its lorebook keys were being matched")
        until_deadline = math.inf if self.deadline is None else self.deadline - time.monotonic()
        if until_deadline <= 0:
            raise self._deadline_error()
        left = self.limits.total_s - self.spent_s
        if left <= 0:
            raise self._total_error()
        timeout = min(self.limits.search_s, left, until_deadline)
        started = time.thread_time()
        try:
            return search(timeout)
        except TimeoutError:
            if timeout == self.limits.search_s:
                raise InvalidArgument(
                    f"{self.prefix}lorebook[{entry_index}].keys[{key_index}]", key,
                    f"regular expression took longer than {self.limits.search_s * 1000:g} ms of CPU time "
                    "to scan the text; simplify it") from None
            if timeout == until_deadline:
                raise self._deadline_error() from None
            raise self._total_error() from None
        finally:
            self.spent_s += time.thread_time() - started
            self.searches += 1

    def _deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"the request's deadline passed after {self.searches} lorebook key searches",
                                field=f"{self.prefix}lorebook")

    def _total_error(self) -> InvalidArgument:
        return InvalidArgument(f"{self.prefix}lorebook", f"{self.searches} key searches",
                               f"the keys took more than the {self.limits.total_s:g} s of CPU time a request may "
                               "spend matching them; use fewer or simpler keys, or a smaller scan_depth_chars")


def check_scan_totals(context: StoryContext, limits: LorebookLimits, prefix: str = "spec.context.") -> None:
    """The text the regular-expression keys would scan together within `limits`, checked before
    any search. Counted as `activate` searches: a key scans its entry's part of the story (again
    for a key-relative entry) and, for a cascading entry, at most every other entry's text once."""
    enabled = {category.id: category.enabled for category in context.lorebook_categories}
    texts = sum(len(entry.text) + len(_SEPARATOR) for entry in context.lorebook)
    scanned = 0
    for entry in context.lorebook:
        if not entry.regex_keys or entry.disabled or (entry.category and not enabled.get(entry.category, True)):
            continue
        story = min(entry.scan_depth_chars or len(context.story), len(context.story))
        per_key = story * (int(not entry.always_on) + int(entry.key_relative))
        if entry.cascading_activation and not entry.always_on:
            per_key += texts
        scanned += per_key * len(entry.keys)
    if scanned > limits.max_regex_scan_chars:
        raise InvalidArgument(f"{prefix}lorebook", f"{scanned} characters",
                              f"the regular-expression keys would scan {scanned} characters of text in all "
                              f"(each key × the text it searches); at most {limits.max_regex_scan_chars}: use "
                              "fewer regular-expression keys or a smaller scan_depth_chars")


@dataclass(frozen=True)
class Activation:
    reason: str  # "always on", "key 'dragon' matched", "cascade from entry 'Castle'"
    key_at: int | None = None  # key-relative entries: where the last key match starts in the story


def activate(context: StoryContext, matching: KeyMatching | None = None,
             ) -> tuple[dict[int, Activation], dict[int, str]]:
    """The activated entries by their index in the lorebook, and why each other entry was not.
    `context` has passed `check_inputs`; without `matching`, the default limits and no deadline."""
    matching = matching or KeyMatching()
    check_scan_totals(context, matching.limits, matching.prefix)
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
            last = _last_match(entry, index, scanned, matching)
            key_at = None if last is None else scanned_from + last
        if entry.always_on:
            active[index] = Activation("always on", key_at)
            continue
        hit = _first_matching_key(entry, index, scanned, matching)
        if hit is not None:
            active[index] = Activation(f"key {hit!r} matched", key_at)
            continue
        where = f"last {entry.scan_depth_chars} characters" if entry.scan_depth_chars else "story"
        inactive[index] = f"no key matched in the {where}" + (
            " or in activated entries" if entry.cascading_activation else "")
        pending.append(index)
    _cascade(context, active, inactive, [i for i in pending if context.lorebook[i].cascading_activation], matching)
    return active, inactive


def _cascade(context: StoryContext, active: dict[int, Activation], inactive: dict[int, str],
             waiting: list[int], matching: KeyMatching) -> None:
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
            found = _first_match(context.lorebook[index], index, scanned, matching)
            if found is not None:
                source = scanned_owners[bisect.bisect_right(starts, found) - 1]
                active[index] = Activation(f"cascade from entry {context.lorebook[source].name!r}")
                inactive.pop(index)
                activated_now.append(index)
        waiting = [index for index in waiting if index not in active]
        scanned_owners = activated_now


def _searches(entry: LoreEntry, index: int, scanned: str, matching: KeyMatching
              ) -> Iterator[tuple[str, regex.Match[str] | None]]:
    """Each key of the entry (in its order) with its first match in `scanned`, or None."""
    for key_index, (key, pattern) in enumerate(zip(entry.keys, entry.patterns)):
        # concurrent=True releases the GIL for the search (`scanned` is an immutable str), so a
        # slow key does not stall the event loop or the model's thread.
        yield key, matching.run(lambda timeout, p=pattern: p.search(scanned, timeout=timeout, concurrent=True),
                                index, key_index, key)


def _first_matching_key(entry: LoreEntry, index: int, scanned: str, matching: KeyMatching) -> str | None:
    """The first of the entry's keys (in its order) that occurs in `scanned`."""
    for key, match in _searches(entry, index, scanned, matching):
        if match:
            return key
    return None


def _first_match(entry: LoreEntry, index: int, scanned: str, matching: KeyMatching) -> int | None:
    """Where the earliest match of any of the entry's keys starts in `scanned`."""
    starts = [match.start() for _, match in _searches(entry, index, scanned, matching) if match]
    return min(starts, default=None)


def _last_match(entry: LoreEntry, index: int, scanned: str, matching: KeyMatching) -> int | None:
    """Where the latest match of any of the entry's keys starts in `scanned`."""
    latest = None
    for key_index, (key, pattern) in enumerate(zip(entry.keys, entry.patterns)):
        # One limit for the whole scan of this key: finditer's timeout covers all its matches.
        def last_start(timeout: float, p: regex.Pattern[str] = pattern) -> int | None:
            found = None
            for match in p.finditer(scanned, timeout=timeout, concurrent=True):
                found = match.start()
            return found

        start = matching.run(last_start, index, key_index, key)
        if start is not None and (latest is None or start > latest):
            latest = start
    return latest

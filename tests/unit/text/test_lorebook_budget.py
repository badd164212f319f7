"""A request's lorebook is bounded as a whole: keys, key characters and the text its regular
expressions would scan are checked before any matching; searches stop at the request's matching
time, its deadline or its cancellation; plain lorebooks are matched as before."""

from __future__ import annotations

import threading
import time

import pytest

from services.text.context import KeyMatching, LorebookLimits, LoreCategory, LoreEntry, StoryContext, check_inputs
from services.text.lorebook import activate
from services.toolkit.errors import Cancelled, DeadlineExceeded, InvalidArgument

# (a|aa)+$ against a run of a's that ends in a mismatch backtracks exponentially: each search
# would run for longer than the universe has existed unless something stops it.
CATASTROPHIC = r"(a|aa)+$"
HOSTILE_STORY = "a" * 60 + "!"
# Limits so generous that only the one a test is about can stop the matching.
UNBOUNDED = LorebookLimits(max_keys=10**9, max_key_chars=10**12, max_regex_scan_chars=10**15,
                           search_s=3600.0, total_s=3600.0)


def hostile(entries: int, keys: int, **fields) -> StoryContext:
    lore = tuple(LoreEntry(name=f"e{i}", text="t", keys=tuple(f"(a|aa)+(?#{j})$" for j in range(keys)),
                           regex_keys=True, **fields) for i in range(entries))
    return StoryContext(story=HOSTILE_STORY, lorebook=lore)


def test_hundreds_of_entries_of_dozens_of_catastrophic_keys_are_refused_before_compiling():
    context = hostile(300, 30)
    # An invalid pattern at the end: were any key compiled first, its error would come instead.
    context = StoryContext(story=context.story, lorebook=context.lorebook + (
        LoreEntry(name="broken", text="t", keys=("(unclosed",), regex_keys=True),))
    with pytest.raises(InvalidArgument) as raised:
        check_inputs(context, 100_000)
    assert raised.value.field == "spec.context.lorebook"
    assert "9001 keys" in raised.value.message and "at most 8192 keys" in raised.value.message


def test_key_characters_in_all_are_bounded():
    lore = tuple(LoreEntry(name=f"e{i}", text="t", keys=("k" * 200,) * 10) for i in range(10))
    with pytest.raises(InvalidArgument) as raised:
        check_inputs(StoryContext(story="s", lorebook=lore), 100_000, limits=LorebookLimits(max_key_chars=19_999))
    assert raised.value.field == "spec.context.lorebook"
    assert "20000 key characters" in raised.value.message
    check_inputs(StoryContext(story="s", lorebook=lore), 100_000, limits=LorebookLimits(max_key_chars=20_000))


def test_category_default_keys_count_for_the_entries_that_take_them():
    defaults = LoreEntry(name="", text="", keys=("a", "b", "c"))
    category = LoreCategory(id="places", use_category_defaults=True, category_defaults=defaults)
    lore = tuple(LoreEntry(name=f"e{i}", text="t", keys=(), category="places") for i in range(4))
    context = StoryContext(story="s", lorebook=lore, lorebook_categories=(category,))
    with pytest.raises(InvalidArgument, match="12 keys"):
        check_inputs(context, 100_000, limits=LorebookLimits(max_keys=11))
    check_inputs(context, 100_000, limits=LorebookLimits(max_keys=12))


def test_text_the_regular_expressions_would_scan_is_bounded_before_any_search():
    # 40 regex keys × 1000 characters of story, plus 20 of them cascading over every entry's text.
    lore = tuple(LoreEntry(name=f"e{i}", text="x" * 98, keys=(r"dragons?", r"wyrms?"), regex_keys=True,
                           cascading_activation=i < 10) for i in range(20))
    scanned = 40 * 1000 + 20 * 20 * (98 + 2)
    context = check_inputs(StoryContext(story="s" * 1000, lorebook=lore), 100_000)
    matching = KeyMatching(LorebookLimits(max_regex_scan_chars=scanned - 1))
    with pytest.raises(InvalidArgument) as raised:
        activate(context, matching)
    assert raised.value.field == "spec.context.lorebook"
    assert f"{scanned} characters" in raised.value.message
    assert matching.searches == 0
    activate(context, KeyMatching(LorebookLimits(max_regex_scan_chars=scanned)))


def test_scan_depth_and_literal_keys_count_less():
    # Scanning the last 10 characters of a long story; literal keys are not regular expressions.
    lore = (LoreEntry(name="near", text="t", keys=(r"dragons?",), regex_keys=True, scan_depth_chars=10),
            LoreEntry(name="literal", text="t", keys=("dragon",) * 50))
    context = check_inputs(StoryContext(story="s" * 100_000 + "dragon", lorebook=lore), 200_000)
    active, _ = activate(context, KeyMatching(LorebookLimits(max_regex_scan_chars=10)))
    assert set(active) == {0, 1}


def test_matching_time_of_the_request_is_bounded_as_a_whole():
    limits = LorebookLimits(**{**UNBOUNDED.__dict__, "total_s": 0.2})
    matching = KeyMatching(limits)
    with pytest.raises(InvalidArgument) as raised:
        activate(check_inputs(hostile(5, 5), 100_000, limits=limits), matching)
    assert raised.value.field == "spec.context.lorebook"
    assert "0.2 s of CPU time" in raised.value.message


def test_the_deadline_stops_the_search_in_progress():
    matching = KeyMatching(UNBOUNDED, deadline=time.monotonic() + 0.3)
    with pytest.raises(DeadlineExceeded) as raised:
        activate(check_inputs(hostile(2, 2), 100_000, limits=UNBOUNDED), matching)
    assert raised.value.field == "spec.context.lorebook"


def test_a_deadline_already_past_searches_nothing():
    matching = KeyMatching(UNBOUNDED, deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded):
        activate(check_inputs(hostile(1, 1), 100_000, limits=UNBOUNDED), matching)
    assert matching.searches == 0


def test_one_slow_key_is_named():
    limits = LorebookLimits(search_s=0.05, total_s=3600.0)
    lore = (LoreEntry(name="calm", text="t", keys=("calm",), regex_keys=True),
            LoreEntry(name="evil", text="t", keys=("calm", CATASTROPHIC), regex_keys=True))
    with pytest.raises(InvalidArgument) as raised:
        activate(check_inputs(StoryContext(story=HOSTILE_STORY, lorebook=lore), 100_000), KeyMatching(limits))
    assert raised.value.field == "spec.context.lorebook[1].keys[1]"
    assert "took longer than 50 ms" in raised.value.message


class PausingMatching(KeyMatching):
    """Stops after its tenth search until the test lets it go on."""

    def __init__(self, limits: LorebookLimits) -> None:
        super().__init__(limits)
        self.paused, self.go_on = threading.Event(), threading.Event()

    def run(self, search, entry_index, key_index, key):
        if self.searches == 10:
            self.paused.set()
            self.go_on.wait()
        return super().run(search, entry_index, key_index, key)


def test_cancelling_from_another_thread_stops_at_the_next_search():
    lore = tuple(LoreEntry(name=f"e{i}", text="t", keys=tuple(f"word{i}x{j}" for j in range(8))) for i in range(8))
    context = check_inputs(StoryContext(story="plain words " * 100, lorebook=lore), 100_000)
    matching = PausingMatching(UNBOUNDED)
    outcome: list[BaseException] = []

    def match() -> None:
        try:
            activate(context, matching)
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            outcome.append(error)

    worker = threading.Thread(target=match)
    worker.start()
    matching.paused.wait()
    matching.cancel()
    matching.go_on.set()
    worker.join()
    assert outcome and isinstance(outcome[0], Cancelled)
    assert matching.searches == 10


def test_a_large_plain_lorebook_is_matched_as_before():
    lore = tuple(LoreEntry(name=f"e{i}", text=f"Entry {i}.", keys=tuple(f"name{i}-{j}" for j in range(15)))
                 for i in range(512))
    story = "The tale. " * 10_000 + "Then name7-14 and NAME300-0 came."
    active, inactive = activate(check_inputs(StoryContext(story=story, lorebook=lore), 200_000))
    assert set(active) == {7, 300}
    assert active[7].reason == "key 'name7-1' matched"  # the entry's first key that occurs
    assert inactive[0] == "no key matched in the story"

"""The context-building rules of docs/text.md ("Context building"), one test each, against
hand-worked examples. The tokenizer here makes every whitespace-separated word one token, so each
count can be checked by eye and joining parts never changes a count."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from fabula.text.v1 import text_pb2
from services.text import wire
from services.text.context import BuiltContext, ContextBuilder, check_inputs
from services.text.context_units import TextUnit, TrimDirection
from services.text.story_context import ContextConfig, LoreCategory, LoreEntry, StoryContext
from services.toolkit.errors import InvalidArgument

WORD = re.compile(r"\S+")


class Words:
    """One token per whitespace-separated word."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.ids.setdefault(match.group(), len(self.ids)) for match in WORD.finditer(text)]

    def decode(self, ids: list[int]) -> str:
        words = {number: word for word, number in self.ids.items()}
        return " ".join(words[number] for number in ids)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in WORD.finditer(text)]


def build(budget: int = 1000, **fields) -> BuiltContext:
    words = Words()
    builder = ContextBuilder(words.encode, words.decode, words.offsets, context_window=1000)
    return builder.build(check_inputs(StoryContext(max_context_tokens=budget, **fields), 100_000), max_new_tokens=0)


def lore(name: str, text: str, keys=(), **settings) -> LoreEntry:
    """An entry with its own context settings (so the older flat fields play no part)."""
    entry_fields = {key: settings.pop(key) for key in list(settings)
                    if key in ("always_on", "key_relative", "cascading_activation", "category", "disabled",
                               "scan_depth_chars")}
    return LoreEntry(name=name, text=text, keys=tuple(keys), context_config=ContextConfig(**settings),
                     **entry_fields)


def rows(built: BuiltContext) -> dict[str, tuple[bool, str, int, int]]:
    return {row.source: (row.included, row.reason, row.tokens, row.trimmed_tokens) for row in built.entries}


def test_parts_are_inserted_in_descending_budget_priority():
    # All at -1 (the end of what is built so far): the insertion order is the priority order.
    entries = (lore("A", "A", always_on=True, budget_priority=500), lore("B", "B", always_on=True, budget_priority=450))
    assert build(memory="M", story="S", lorebook=entries).prompt == "M\nA\nB\nS"
    entries = (lore("A", "A", always_on=True, budget_priority=500), lore("B", "B", always_on=True, budget_priority=600))
    assert build(memory="M", story="S", lorebook=entries).prompt == "M\nB\nA\nS"
    # Memory sits at position 0, so it stays on top even when placed last.
    assert build(memory="M", story="S", memory_config=ContextConfig(budget_priority=-900)).prompt == "M\nS"


def test_each_part_gets_the_room_left_by_higher_priorities():
    # Budget 6: memory (800) takes its 3 words; the story (0, nothing reserved) gets the other 3
    # and loses its oldest sentence.
    built = build(6, memory="m1 m2 m3.", story="s1. s2. s3. s4.", story_config=ContextConfig(reserved_tokens=0))
    assert built.prompt == "m1 m2 m3.\ns2. s3. s4."
    assert rows(built)["story"] == (True, "trimmed to budget at a sentence boundary", 3, 1)
    assert len(built.prompt_ids) == 6


def test_reserved_tokens_are_set_aside_before_higher_priorities_are_placed():
    story = " ".join(f"s{i}." for i in range(10))  # 10 one-word sentences
    # The story reserves min(512, its 10 tokens, the budget 10) = 10: memory above it gets nothing.
    built = build(10, memory="m1 m2 m3 m4 m5.", story=story)
    assert rows(built)["memory"] == (False, "left out: budget", 0, 5)
    # Reserving 3: memory may use 10 - 3 = 7 (needs 5); the story gets the remaining 5.
    built = build(10, memory="m1 m2 m3 m4 m5.", story=story, story_config=ContextConfig(reserved_tokens=3))
    assert built.prompt == "m1 m2 m3 m4 m5.\ns5. s6. s7. s8. s9."
    # The author's note (-400, below the story) reserves its whole size by default, so the story
    # above it leaves it room; reserving nothing, the story takes it all.
    note_story = dict(story=story, authors_note="n1 n2.", story_config=ContextConfig(reserved_tokens=0))
    built = build(10, **note_story)
    assert rows(built)["authors_note"] == (True, "included whole", 2, 0)
    assert rows(built)["story"][2] == 8
    built = build(10, **note_story, authors_note_config=ContextConfig(reserved_tokens=0))
    assert rows(built)["authors_note"] == (False, "left out: budget", 0, 2)


def test_token_budget_caps_a_part_even_with_room_to_spare():
    entry = lore("E", "a b c d e f.", always_on=True, token_budget=3, maximum_trim_type=TextUnit.TOKEN)
    built = build(story="S", lorebook=(entry,))
    assert built.prompt == "a b c\nS"
    assert rows(built)["lorebook:E"] == (True, "always on; trimmed to budget at a token boundary", 3, 3)


TRIM_TEXT = "one two. three four.\nfive six. seven eight."  # 8 tokens, 2 lines, 4 sentences


@pytest.mark.parametrize(("direction", "finest", "kept", "cut_at"), [
    (TrimDirection.TOP, TextUnit.NEWLINE, "five six. seven eight.", "newline"),
    (TrimDirection.TOP, TextUnit.SENTENCE, "three four.\nfive six. seven eight.", "sentence"),
    (TrimDirection.TOP, TextUnit.TOKEN, "two. three four.\nfive six. seven eight.", "token"),
    (TrimDirection.BOTTOM, TextUnit.NEWLINE, "one two. three four.", "newline"),
    (TrimDirection.BOTTOM, TextUnit.SENTENCE, "one two. three four.\nfive six.", "sentence"),
    (TrimDirection.BOTTOM, TextUnit.TOKEN, "one two. three four.\nfive six. seven", "token"),
])
def test_trim_direction_and_maximum_trim_type(direction, finest, kept, cut_at):
    # 7 tokens of room: the longest part that fits and is cut at a start of `finest` or coarser.
    entry = lore("E", TRIM_TEXT, always_on=True, token_budget=7, trim_direction=direction, maximum_trim_type=finest)
    built = build(story="", lorebook=(entry,))
    assert built.prompt == kept
    tokens = len(kept.split())
    assert rows(built)["lorebook:E"] == (True, f"always on; trimmed to budget at a {cut_at} boundary", tokens, 8 - tokens)


def test_trim_direction_none_is_whole_or_nothing():
    entry = lore("E", TRIM_TEXT, always_on=True, token_budget=7, trim_direction=TrimDirection.NONE,
                 maximum_trim_type=TextUnit.TOKEN)
    built = build(story="", lorebook=(entry,))
    assert built.prompt == "" and rows(built)["lorebook:E"] == (False, "always on; left out: budget", 0, 8)
    entry = lore("E", TRIM_TEXT, always_on=True, token_budget=8, trim_direction=TrimDirection.NONE)
    assert build(story="", lorebook=(entry,)).prompt == TRIM_TEXT


STORY_LINES = "L0 a. L0 b.\nL1 a. L1 b.\nL2 a. L2 b."  # 3 lines, 6 sentences, 12 tokens


@pytest.mark.parametrize(("unit", "position", "expected"), [
    (TextUnit.NEWLINE, 0, "X \nL0 a. L0 b.\nL1 a. L1 b.\nL2 a. L2 b."),
    (TextUnit.NEWLINE, 1, "L0 a. L0 b.\nX \nL1 a. L1 b.\nL2 a. L2 b."),
    (TextUnit.NEWLINE, -1, "L0 a. L0 b.\nL1 a. L1 b.\nL2 a. L2 b.\nX "),
    (TextUnit.NEWLINE, -2, "L0 a. L0 b.\nL1 a. L1 b.\nX \nL2 a. L2 b."),
    (TextUnit.NEWLINE, 99, "L0 a. L0 b.\nL1 a. L1 b.\nL2 a. L2 b.\nX "),
    (TextUnit.SENTENCE, 1, "L0 a. X L0 b.\nL1 a. L1 b.\nL2 a. L2 b."),
    (TextUnit.SENTENCE, -2, "L0 a. L0 b.\nL1 a. L1 b.\nL2 a. X L2 b."),
    (TextUnit.SENTENCE, -99, "X L0 a. L0 b.\nL1 a. L1 b.\nL2 a. L2 b."),
    (TextUnit.TOKEN, 3, "L0 a. L0 X b.\nL1 a. L1 b.\nL2 a. L2 b."),
    (TextUnit.TOKEN, -2, "L0 a. L0 b.\nL1 a. L1 b.\nL2 a. L2 X b."),
])
def test_insertion_type_and_position(unit, position, expected):
    # Priority -10: inserted after the story (0), counting in the context built so far.
    entry = lore("X", "X", always_on=True, budget_priority=-10, suffix=" ", insertion_type=unit,
                 insertion_position=position)
    assert build(story=STORY_LINES, lorebook=(entry,)).prompt == expected


def test_prefix_and_suffix_wrap_the_text_and_count_in_its_budget():
    # "P:" and ";" are a token each: 4 tokens of budget leave 2 for the text.
    entry = lore("E", "a b c d", always_on=True, prefix="P: ", suffix=" ;", token_budget=4,
                 maximum_trim_type=TextUnit.TOKEN)
    built = build(story="S", memory="Ada.", memory_config=ContextConfig(prefix="[ ", suffix=" ]"), lorebook=(entry,))
    assert built.prompt == "[ Ada. ]\nP: a b ;\nS"
    assert rows(built)["lorebook:E"][2:] == (4, 2) and rows(built)["memory"][2] == 3


def test_key_relative_entries_count_from_the_last_key_in_the_story():
    story = "L0 dragon.\nL1.\nL2 dragon.\nL3."
    after = lore("after", "AFTER", ["dragon"], key_relative=True, insertion_position=0)
    before = lore("before", "BEFORE", ["dragon"], key_relative=True, insertion_position=-1)
    # The memory line above shifts every character; the anchor follows.
    built = build(story=story, memory="M", lorebook=(after, before))
    assert built.prompt == "M\nL0 dragon.\nL1.\nBEFORE\nL2 dragon.\nAFTER\nL3."
    # A key trimmed out of the story (4 tokens of budget: the entry's 1, the story's newest 3)
    # leaves the entry placed by its position, counted from the bottom.
    early = lore("early", "EARLY", ["first"], key_relative=True, insertion_position=-1)
    built = build(4, story="first. two. three. four.", lorebook=(early,), story_config=ContextConfig(reserved_tokens=0))
    assert built.prompt == "two. three. four.\nEARLY"
    assert rows(built)["lorebook:early"][1] == ("key 'first' matched; its key is not in the placed story, "
                                                "so placed by position")


def test_cascading_activation_reaches_a_fixed_point_and_survives_a_cycle():
    entries = (
        lore("Castle", "The castle has a moat.", ["castle"]),
        lore("Moat", "The moat holds eels.", ["moat"], cascading_activation=True),
        lore("Eels", "Eels bite.", ["eels"], cascading_activation=True),
        lore("Plain", "Not cascading.", ["eels"]),
        # A cycle: each names the other, neither is in the story.
        lore("Fox", "The hound.", ["fox"], cascading_activation=True),
        lore("Hound", "The fox.", ["hound"], cascading_activation=True),
        # A cycle through activated entries: "moat" is back in Moat's own chain.
        lore("Bite", "A bite near the moat.", ["bite"], cascading_activation=True),
    )
    report = rows(build(story="We reached the castle.", lorebook=entries))
    assert report["lorebook:Castle"][:2] == (True, "key 'castle' matched")
    assert report["lorebook:Moat"][:2] == (True, "cascade from entry 'Castle'")
    assert report["lorebook:Eels"][:2] == (True, "cascade from entry 'Moat'")
    assert report["lorebook:Bite"][:2] == (True, "cascade from entry 'Eels'")
    assert report["lorebook:Plain"][:2] == (False, "no key matched in the story")
    for name in ("Fox", "Hound"):
        assert report[f"lorebook:{name}"][:2] == (False, "no key matched in the story or in activated entries")


def test_a_disabled_category_keeps_its_entries_out():
    categories = (LoreCategory(id="c", name="Places", enabled=False),)
    built = build(story="castle", lorebook=(lore("E", "E", ["castle"], category="c"),), lorebook_categories=categories)
    assert rows(built)["lorebook:E"] == (False, "category disabled", 0, 0) and built.prompt == "castle"


def test_category_defaults_fill_what_entries_leave_unset():
    template = LoreEntry(name="", text="", keys=("orc",), context_config=ContextConfig(prefix="ORC: ", budget_priority=10))
    categories = (LoreCategory(id="c", use_category_defaults=True, category_defaults=template),)
    entries = (lore("keyless", "Orcs are green.", category="c"),
               lore("own", "Orcs sing.", ["sing"], category="c", prefix="Own: "))
    built = build(story="An orc came to sing.", lorebook=entries, lorebook_categories=categories)
    # Priority 10 from the template (above the story's 0), prefixes from the template or their own.
    assert built.prompt == "ORC: Orcs are green.\nOwn: Orcs sing.\nAn orc came to sing."
    assert rows(built)["lorebook:keyless"][1] == "key 'orc' matched"


def test_a_subcontext_is_assembled_first_and_placed_as_one_part():
    categories = (LoreCategory(id="c", name="People", create_subcontext=True,
                               subcontext_config=ContextConfig(prefix="----\n", token_budget=3)),)
    entries = (lore("P1", "p1", always_on=True, category="c", budget_priority=500),
               lore("P2", "p2", always_on=True, category="c", budget_priority=600),
               lore("P3", "p3 p3", always_on=True, category="c", budget_priority=100, trim_direction=TrimDirection.NONE))
    built = build(story="S", memory="M", lorebook=entries, lorebook_categories=categories)
    # Inside: P2, P1 by priority; P3 did not fit the sub-context's own 3-token budget ("----" is one).
    assert built.prompt == "M\n----\np2\np1\nS"
    report = rows(built)
    assert report["subcontext:People"] == (True, "3 activated entries of category 'People'", 3, 0)
    assert report["lorebook:P3"] == (False, "always on; left out: budget", 0, 2)
    assert report["lorebook:P1"] == (True, "always on", 1, 0)
    # Left out as a whole (trim none, 2 tokens of budget, 1 reserved by the story), its entries say so.
    whole_or_nothing = (replace(categories[0], subcontext_config=ContextConfig(
        prefix="----\n", token_budget=3, trim_direction=TrimDirection.NONE)),)
    report = rows(build(2, story="S", lorebook=entries, lorebook_categories=whole_or_nothing))
    assert report["subcontext:People"] == (False, "3 activated entries of category 'People'; left out: budget", 0, 3)
    assert report["lorebook:P1"] == (False, "always on; left out with its sub-context", 0, 1)


def test_the_report_names_every_part_and_why():
    categories = (LoreCategory(id="off", enabled=False),)
    entries = (
        lore("always", "Always.", always_on=True),
        lore("keyed", "Keyed.", ["dragon"]),
        lore("cascaded", "Cascaded.", ["always"], cascading_activation=True),
        lore("unmatched", "Unmatched.", ["griffin"]),
        lore("disabled", "Disabled.", ["dragon"], disabled=True),
        lore("off", "Off.", ["dragon"], category="off"),
        lore("long", "w1 w2 w3 w4 w5.", always_on=True, budget_priority=100, maximum_trim_type=TextUnit.TOKEN),
        lore("whole", "v1 v2 v3 v4.", always_on=True, budget_priority=50, trim_direction=TrimDirection.NONE),
    )
    built = build(9, story="A dragon.", memory="Mem.", lorebook=entries, lorebook_categories=categories)
    assert [(row.source, row.included, row.reason, row.tokens, row.trimmed_tokens) for row in built.entries] == [
        ("memory", True, "included whole", 1, 0),
        ("authors_note", False, "empty", 0, 0),
        ("story", True, "included whole", 2, 0),
        ("lorebook:always", True, "always on", 1, 0),
        ("lorebook:keyed", True, "key 'dragon' matched", 1, 0),
        ("lorebook:cascaded", True, "cascade from entry 'always'", 1, 0),
        ("lorebook:unmatched", False, "no key matched in the story", 0, 0),
        ("lorebook:disabled", False, "disabled", 0, 0),
        ("lorebook:off", False, "category disabled", 0, 0),
        ("lorebook:long", True, "always on; trimmed to budget at a token boundary", 3, 2),
        ("lorebook:whole", False, "always on; left out: budget", 0, 4),
    ]
    assert len(built.prompt_ids) == 9


@pytest.mark.parametrize(("fields", "field"), [
    (dict(lorebook=(LoreEntry(name="e", text="t", keys=("k",), category="nope"),)), "spec.context.lorebook[0].category"),
    (dict(lorebook_categories=(LoreCategory(id="a"), LoreCategory(id="a"))), "spec.context.lorebook_categories[1].id"),
    (dict(lorebook_categories=(LoreCategory(id=""),)), "spec.context.lorebook_categories[0].id"),
    (dict(lorebook_categories=(LoreCategory(id="a", category_defaults=LoreEntry(name="", text="", keys=(), category="b")),
                               LoreCategory(id="b"))), "spec.context.lorebook_categories[0].category_defaults.category"),
    (dict(lorebook=(LoreEntry(name="e", text="t", keys=("k",), id="x"), LoreEntry(name="f", text="t", keys=("k",), id="x"))),
     "spec.context.lorebook[1].id"),
    (dict(lorebook=tuple(LoreEntry(name="e", text="t", keys=("k",)) for _ in range(513))), "spec.context.lorebook"),
    (dict(lorebook=(LoreEntry(name="e", text="t", keys=("k",) * 65),)), "spec.context.lorebook[0].keys"),
    (dict(memory_config=ContextConfig(prefix="x" * 1001)), "spec.context.memory_config.prefix"),
])
def test_bad_references_and_sizes_name_the_field(fields, field):
    with pytest.raises(InvalidArgument) as raised:
        check_inputs(StoryContext(story="s", **fields), 100_000)
    assert raised.value.field == field


def test_an_unknown_enum_number_is_refused_by_field_name():
    message = text_pb2.StoryContext(story="s", lorebook=[text_pb2.LorebookEntry(
        keys=["k"], context_config=text_pb2.ContextConfig(insertion_type=9))])
    with pytest.raises(InvalidArgument) as raised:
        check_inputs(wire.story_context_from_pb(message), 100_000)
    assert raised.value.field == "spec.context.lorebook[0].context_config.insertion_type"


def test_wire_maps_settings_and_leaves_unset_fields_to_the_defaults():
    message = text_pb2.StoryContext(
        story="s", story_config=text_pb2.ContextConfig(trim_direction=text_pb2.TRIM_DIRECTION_NONE, reserved_tokens=0),
        lorebook_categories=[text_pb2.LorebookCategory(id="c", create_subcontext=True)])
    context = check_inputs(wire.story_context_from_pb(message), 100_000)
    assert context.story_config.trim_direction is TrimDirection.NONE and context.story_config.reserved_tokens == 0
    assert context.story_config.maximum_trim_type is TextUnit.SENTENCE and context.story_config.insertion_position == -1
    assert context.lorebook_categories[0].enabled  # unset = enabled
    assert context.memory_config.budget_priority == 800 and context.authors_note_config.insertion_position == -4


def build_in_blocks(story: str, budget: int, block: int, **fields) -> BuiltContext:
    words = Words()
    builder = ContextBuilder(words.encode, words.decode, words.offsets, context_window=1000, story_block_tokens=block)
    return builder.build(check_inputs(StoryContext(story=story, max_context_tokens=budget, **fields), 100_000),
                         max_new_tokens=0)


def test_a_story_trimmed_in_blocks_keeps_its_start_while_it_grows():
    # One-word sentences, so every word is a sentence start. Budget 10 with blocks of 4: the cuts may
    # only fall at words 4, 8, 12, ... of the story.
    story = " ".join(f"s{i}." for i in range(12))
    starts = []
    for grown in range(4):
        text = story + "".join(f" n{j}." for j in range(grown))
        built = build_in_blocks(text, 10, 4, story_config=ContextConfig(reserved_tokens=0))
        starts.append(built.prompt.split()[0])
        assert len(built.prompt_ids) <= 10
    # 12 words: cut at word 4 (8 kept); 13, 14: still word 4 (9, 10 kept); 15: the next block, word 8.
    assert starts == ["s4.", "s4.", "s4.", "s8."]
    # Token-exact trimming moves the start with every word.
    exact = [build_in_blocks(story + "".join(f" n{j}." for j in range(grown)), 10, 0,
                             story_config=ContextConfig(reserved_tokens=0)).prompt.split()[0] for grown in range(4)]
    assert exact == ["s2.", "s3.", "s4.", "s5."]


def test_blocks_change_nothing_when_the_story_fits():
    story = "s1. s2. s3."
    for block in (0, 2, 128):
        assert build_in_blocks(story, 10, block, memory="m.").prompt == "m.\ns1. s2. s3."


def test_blocks_apply_to_the_story_only():
    memory = " ".join(f"m{i}." for i in range(8))
    built = build_in_blocks("s.", 6, 4, memory=memory, memory_config=ContextConfig(token_budget=5))
    # Memory is trimmed from the bottom to its own 5 tokens, at any sentence start.
    assert built.prompt == "m0. m1. m2. m3. m4.\ns."


def reused_share(block: int, steps: int = 40) -> float:
    """Over a writing session whose story outgrows the budget, the share of each prompt's tokens
    that an earlier prompt began with (what a prefix cache can serve)."""
    story = " ".join(f"s{i}." for i in range(90))
    earlier: list[list[int]] = []
    served = total = 0
    words = Words()
    builder = ContextBuilder(words.encode, words.decode, words.offsets, context_window=1000, story_block_tokens=block)
    for step in range(steps):
        context = StoryContext(story=story, memory="m1 m2 m3.", max_context_tokens=100,
                               story_config=ContextConfig(reserved_tokens=0))
        ids = builder.build(check_inputs(context, 100_000), max_new_tokens=0).prompt_ids
        longest = 0
        for before in earlier:
            common = 0
            while common < min(len(ids), len(before)) and ids[common] == before[common]:
                common += 1
            longest = max(longest, common)
        served, total = served + longest, total + len(ids)
        earlier.append(ids)
        story += f" n{step}a. n{step}b. n{step}c."  # three tokens a step
    return served / total


def test_trimming_in_blocks_keeps_the_prompt_prefix_of_a_growing_story():
    exact, blocks = reused_share(0), reused_share(24)
    # Token-exact: every step moves the story's start; only the memory is ever reused.
    assert exact < 0.1
    # Blocks of 24: the start moves once every 8 steps.
    assert blocks > 0.75

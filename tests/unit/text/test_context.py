"""The context builder: budget, trimming on boundaries, lorebook triggers and placement, report."""

from __future__ import annotations

import pytest

from fabula.text.v1 import text_pb2
from services.text import wire
from services.text.context import ContextBuilder, StoryContext, check_inputs
from services.toolkit.errors import InvalidArgument

SENTENCES = [f"Sentence number {i} tells of the knight and the sea." for i in range(40)]
STORY = " ".join(SENTENCES[:20]) + "\n" + " ".join(SENTENCES[20:])


@pytest.fixture
def builder(tiny_tokenizer):
    def encode(text):
        return tiny_tokenizer.encode(text, add_special_tokens=False)

    def offsets(text):
        return tiny_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]

    return ContextBuilder(encode, lambda ids: tiny_tokenizer.decode(ids), offsets, context_window=512)


def story(**fields) -> StoryContext:
    return check_inputs(wire.story_context_from_pb(text_pb2.StoryContext(**fields)), max_story_chars=100_000)


def entry(**fields) -> text_pb2.LorebookEntry:
    return text_pb2.LorebookEntry(**fields)


def by_source(built):
    return {e.source: e for e in built.entries}


def test_short_story_is_included_whole(builder):
    built = builder.build(story(story="A short tale."), max_new_tokens=10)
    assert built.prompt == "A short tale."
    assert by_source(built)["story"].reason == "included whole"
    assert built.budget == 502


@pytest.mark.parametrize("budget", [60, 120, 250])
def test_budget_is_respected_and_the_story_is_trimmed_from_the_oldest_side(builder, tiny_tokenizer, budget):
    built = builder.build(story(story=STORY, max_context_tokens=budget), max_new_tokens=10)
    assert len(built.prompt_ids) <= budget
    assert built.prompt_ids == tiny_tokenizer.encode(built.prompt, add_special_tokens=False)
    # The newest text is kept, and the cut is at a sentence start.
    assert STORY.endswith(built.prompt)
    assert built.prompt.startswith("Sentence number")
    report = by_source(built)["story"]
    assert report.trimmed_tokens > 0 and "boundary" in report.reason
    # Close to the budget: no more than one sentence of room is wasted.
    assert budget - len(built.prompt_ids) <= len(tiny_tokenizer.encode(" " + SENTENCES[0])) + 4


def test_single_long_sentence_is_cut_mid_sentence_only_when_token_trimming_is_allowed(builder):
    long_sentence = "and then " * 200
    # The story's default maximum trim type is the sentence: no sentence fits, so none of it goes in.
    built = builder.build(story(story=long_sentence, max_context_tokens=40), max_new_tokens=10)
    assert built.prompt == "" and by_source(built)["story"].reason == "left out: budget"
    config = text_pb2.ContextConfig(maximum_trim_type=text_pb2.TRIM_TYPE_TOKEN)
    built = builder.build(story(story=long_sentence, max_context_tokens=40, story_config=config), max_new_tokens=10)
    assert len(built.prompt_ids) <= 40 and long_sentence.endswith(built.prompt)
    assert by_source(built)["story"].reason == "trimmed to budget at a token boundary"


def test_memory_and_authors_note_are_placed(builder):
    text = "\n".join(f"Line {i}." for i in range(10))
    built = builder.build(story(story=text, memory="MEMORY", authors_note="[NOTE]", authors_note_depth=2),
                          max_new_tokens=10)
    lines = built.prompt.split("\n")
    assert lines[0] == "MEMORY"
    assert lines[-3:] == ["[NOTE]", "Line 8.", "Line 9."]
    assert by_source(built)["memory"].included and by_source(built)["authors_note"].included


def test_memory_is_kept_when_the_story_must_shrink(builder):
    # The story reserves 512 tokens by default, more than this whole budget: reserved tokens are
    # set aside before memory is placed, so the story reserves less here.
    built = builder.build(story(story=STORY, memory="The hero is Ada.", max_context_tokens=80,
                                story_config=text_pb2.ContextConfig(reserved_tokens=20)), max_new_tokens=10)
    assert built.prompt.startswith("The hero is Ada.\n")
    assert len(built.prompt_ids) <= 80


def test_lorebook_literal_keys_case_and_scan_depth(builder):
    lore = [
        entry(name="dragon", text="Dragons breathe fire.", keys=["DRAGON"]),
        entry(name="dragon-cs", text="Case matters.", keys=["DRAGON"], case_sensitive=True),
        entry(name="far", text="Far away.", keys=["beginning"], scan_depth_chars=20),
        entry(name="near", text="Near.", keys=["end of it"], scan_depth_chars=20),
        entry(name="always", text="Always here.", always_on=True),
        entry(name="off", text="Off.", keys=["dragon"], disabled=True),
    ]
    built = builder.build(story(story="At the beginning a dragon came. That was the end of it.", lorebook=lore),
                          max_new_tokens=10)
    report = by_source(built)
    assert report["lorebook:dragon"].included and "DRAGON" in report["lorebook:dragon"].reason
    assert not report["lorebook:dragon-cs"].included
    assert not report["lorebook:far"].included and "last 20 characters" in report["lorebook:far"].reason
    assert report["lorebook:near"].included
    assert report["lorebook:always"].included and report["lorebook:always"].reason == "always on"
    assert report["lorebook:off"].reason == "disabled"
    for text in ("Dragons breathe fire.", "Near.", "Always here."):
        assert text in built.prompt
    for text in ("Case matters.", "Far away.", "Off."):
        assert text not in built.prompt


def test_lorebook_regex_keys(builder):
    lore = [entry(name="re", text="Matched by regex.", keys=[r"\bkni(ght|ghts)\b"], regex_keys=True),
            entry(name="literal", text="Literal dot.", keys=["k.ight"])]
    built = builder.build(story(story="Two knights rode."), max_new_tokens=10)
    built = builder.build(story(story="Two knights rode.", lorebook=lore), max_new_tokens=10)
    assert by_source(built)["lorebook:re"].included
    assert not by_source(built)["lorebook:literal"].included  # not a regex: "." is literal


def test_invalid_regex_names_the_key(builder):
    with pytest.raises(InvalidArgument) as raised:
        story(story="x", lorebook=[entry(name="bad", text="t", keys=["ok", "(unclosed"], regex_keys=True)])
    assert raised.value.field == "spec.context.lorebook[0].keys[1]"


def test_catastrophic_regex_is_refused_not_left_running(builder):
    # (a|aa)+$ against many a's followed by a mismatch backtracks exponentially; without the
    # timeout this search would run for longer than the universe has existed.
    lore = [entry(name="ok", text="t", keys=["calm"], regex_keys=True),
            entry(name="evil", text="t", keys=["calm", r"(a|aa)+$"], regex_keys=True)]
    with pytest.raises(InvalidArgument) as raised:
        builder.build(story(story="a" * 40 + "!", lorebook=lore), max_new_tokens=10)
    assert raised.value.field == "spec.context.lorebook[1].keys[1]"
    assert "took longer" in raised.value.message


def test_entry_token_budget_and_insertion_order_under_a_tight_budget(builder, tiny_tokenizer):
    long_text = "The ancient order of the sea keeps many secrets. " * 10
    lore = [
        entry(name="low", text="Low priority entry text here.", always_on=True, insertion_order=1),
        entry(name="high", text=long_text, always_on=True, insertion_order=10, token_budget=20),
    ]
    built = builder.build(story(story=STORY, lorebook=lore, max_context_tokens=60), max_new_tokens=10)
    report = by_source(built)
    high = report["lorebook:high"]
    assert high.included and high.tokens <= 20 and high.trimmed_tokens > 0
    assert len(built.prompt_ids) <= 60
    # With a budget too small for both, the higher insertion order wins: it is placed whole and
    # the lower one is cut (at any token, as older entries are) to what is left.
    built = builder.build(story(story="x", lorebook=lore, max_context_tokens=22), max_new_tokens=10)
    report = by_source(built)
    assert report["lorebook:high"].included and report["lorebook:high"].tokens == 20
    assert report["lorebook:low"].tokens <= 2 and "trimmed to budget" in report["lorebook:low"].reason


def test_insertion_position_counts_lines_from_the_end(builder):
    text = "\n".join(f"Line {i}." for i in range(6))
    lore = [entry(name="top", text="TOP", always_on=True, insertion_position=0),
            entry(name="deep", text="DEEP", always_on=True, insertion_position=-2)]
    built = builder.build(story(story=text, memory="MEM", lorebook=lore), max_new_tokens=10)
    assert built.prompt.split("\n") == ["MEM", "TOP", "Line 0.", "Line 1.", "Line 2.", "Line 3.", "DEEP",
                                         "Line 4.", "Line 5."]


def test_budget_larger_than_the_window_is_refused(builder):
    with pytest.raises(InvalidArgument) as raised:
        builder.build(story(story="x", max_context_tokens=600), max_new_tokens=10)
    assert raised.value.field == "spec.context.max_context_tokens"

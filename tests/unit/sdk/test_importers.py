"""Importers: every entry, key, category and context setting of real-shaped NovelAI, SillyTavern
and KoboldAI files arrives in Fabula's documents; bad and hostile files are refused whole, with
the field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabula_sdk.documents.content import Origin
from fabula_sdk.documents.context import TextUnit, TrimDirection
from fabula_sdk.documents.lorebook import Lorebook
from fabula_sdk.documents.preset import SamplerName
from fabula_sdk.importers import ImportRefused, read_lorebook, read_story
from fabula_sdk.importers.checks import MAX_ENTRIES, MAX_ENTRY_TEXT_CHARS, MAX_JSON_DEPTH
from fabula_sdk.importers.novelai import ASSUMED_CONTEXT_TOKENS

FIXTURES = Path(__file__).parents[2] / "fixtures" / "importers"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_novelai_lorebook_every_entry_key_category_and_setting():
    book = read_lorebook(fixture("dragons.lorebook"), "dragons.lorebook")
    assert book.name == "dragons"
    assert [entry.name for entry in book.entries] == ["Vyrmathrax", "Ashen Keep", "Magic"]
    dragon, keep, magic = book.entries

    assert dragon.id == "b6b6c3f0-1d55-4d6e-9a39-5b1f3e7b2a10"
    assert dragon.text.startswith("Vyrmathrax is an ancient red dragon")
    assert dragon.keys == ["Vyrmathrax", "red dragon"] and not dragon.regex_keys and not dragon.case_sensitive
    assert dragon.scan_depth_chars == 1000 and not dragon.always_on and not dragon.disabled
    assert dragon.category == "3f1c1a43-7d0e-4e7e-8a4b-2a7d3f6e9c01"
    config = dragon.context_config
    assert (config.prefix, config.suffix, config.token_budget, config.reserved_tokens, config.budget_priority) == (
        "[ ", " ]\n", 0, 0, 400)  # a budget of the whole context (1) is "no limit"
    assert (config.trim_direction, config.insertion_type, config.maximum_trim_type, config.insertion_position) == (
        TrimDirection.BOTTOM, TextUnit.NEWLINE, TextUnit.SENTENCE, -1)
    assert dragon.extra["novelai"]["loreBiasGroups"][0]["generateOnce"] is True  # kept, not lost

    # A regex key (/.../i) next to a literal one: both become regexes, the literal escaped.
    assert keep.regex_keys and keep.keys == ["ashen\\s+keep", "fortress"] and not keep.case_sensitive
    assert keep.key_relative and keep.cascading_activation and keep.scan_depth_chars == 4000
    assert keep.category == ""
    config = keep.context_config
    assert (config.token_budget, config.reserved_tokens, config.budget_priority) == (200, 50, 300)
    assert (config.trim_direction, config.insertion_type, config.maximum_trim_type, config.insertion_position) == (
        TrimDirection.TOP, TextUnit.SENTENCE, TextUnit.NEWLINE, 2)

    # A regex without the i flag is case-sensitive; shares of the context become tokens.
    assert magic.regex_keys and magic.case_sensitive and magic.keys == ["\\bMagic\\b"]
    assert magic.disabled and magic.always_on
    config = magic.context_config
    assert config.token_budget == round(0.25 * ASSUMED_CONTEXT_TOKENS)
    assert config.reserved_tokens == round(0.05 * ASSUMED_CONTEXT_TOKENS)
    assert (config.trim_direction, config.insertion_type, config.maximum_trim_type, config.insertion_position,
            config.budget_priority) == (TrimDirection.NONE, TextUnit.TOKEN, TextUnit.TOKEN, 0, -100)

    (creatures,) = book.categories
    assert (creatures.id, creatures.name, creatures.enabled, creatures.create_subcontext,
            creatures.use_category_defaults) == ("3f1c1a43-7d0e-4e7e-8a4b-2a7d3f6e9c01", "Creatures", True, True, True)
    sub = creatures.subcontext_config
    assert (sub.prefix, sub.suffix, sub.token_budget, sub.reserved_tokens, sub.budget_priority,
            sub.insertion_position) == ("----\n", "\n----\n", 300, 100, 500, 1)
    defaults = creatures.category_defaults
    assert defaults.keys == ["creature"] and defaults.scan_depth_chars == 2000 and defaults.cascading_activation
    assert defaults.name == "New creature" and defaults.category == creatures.id
    assert (defaults.context_config.token_budget, defaults.context_config.budget_priority,
            defaults.context_config.insertion_position) == (120, 350, -3)
    assert book.extra["novelai"] == {"settings": {"orderByKeyLocations": False}}
    # What was imported is a valid Fabula document, and survives its own round trip.
    assert Lorebook.from_bytes(book.to_bytes()).to_bytes() == book.to_bytes()


def test_novelai_scenario_maps_prompt_memory_note_settings_and_lorebook():
    story = read_story(fixture("the-keep.scenario"), "the-keep.scenario")
    assert story.title == "The Ashen Keep" and story.tags == ["fantasy", "dragons"]
    assert story.origin == Origin.PROMPT
    # Placeholders stay in the text as written.
    assert story.text == "The storm had not stopped for three days when ${name} climbed the tower stairs."
    assert story.description == "You are ${name}, the last keeper of the Ashen Keep."
    assert story.memory.text.startswith("${name} is the keeper.")
    assert story.memory.context_config.budget_priority == 800 and story.memory.context_config.insertion_position == 0
    assert story.authors_note.text == "[ Style: gothic, slow. ]"
    note = story.authors_note.context_config
    assert (note.budget_priority, note.insertion_position, note.reserved_tokens) == (-400, -4, ASSUMED_CONTEXT_TOKENS)
    assert story.story_config.reserved_tokens == 512 and story.story_config.trim_direction == TrimDirection.TOP
    assert story.settings.text_model == "kayra-v1"

    preset = story.preset
    assert preset is not None and preset.name == "Gothic Carefree" and preset.text_model == "kayra-v1"
    sampling = preset.sampling
    assert (sampling.temperature, sampling.top_k, sampling.top_p, sampling.top_a, sampling.typical_p,
            sampling.tail_free) == (1.05, 0, 0.95, 0.1, 0.98, 0.92)
    assert (sampling.repetition_penalty, sampling.repetition_penalty_range, sampling.repetition_penalty_slope,
            sampling.frequency_penalty, sampling.presence_penalty) == (1.15, 2048, 0.5, 0.01, 0.02)
    assert [(step.sampler, step.enabled) for step in preset.sampler_order] == [
        (SamplerName.TEMPERATURE, True), (SamplerName.TOP_P, True), (SamplerName.TAIL_FREE, True),
        (SamplerName.TOP_A, False), (SamplerName.TYPICAL_P, False), (SamplerName.TOP_K, True),
        (SamplerName.MIN_P, False)]  # left out by NovelAI: named, switched off
    assert (preset.max_new_tokens, preset.min_new_tokens) == (40, 1)
    assert preset.extra["novelai"] == {"bad_words_ids": [], "logit_bias_exp": []}

    assert story.lorebook is not None and [entry.name for entry in story.lorebook.entries] == ["The lamp"]
    assert story.lorebook.entries[0].cascading_activation
    kept = story.extra["novelai"]
    assert kept["placeholders"][0]["defaultValue"] == "Mara" and kept["author"] == "a writer"
    assert kept["settings"]["prefix"] == "vanilla"


def test_sillytavern_world_info():
    book = read_lorebook(fixture("harbor-world-info.json"), "harbor-world-info.json")
    assert book.name == "harbor-world-info"
    harbor, orla, tone = book.entries
    assert harbor.id == "0" and harbor.name == "The harbor" and harbor.keys == ["harbor", "docks"]
    assert not harbor.regex_keys and not harbor.case_sensitive and harbor.cascading_activation
    assert harbor.context_config.budget_priority == 100 and harbor.context_config.insertion_position == 0
    assert harbor.extra["sillytavern"]["keysecondary"] == ["night"]  # no Fabula field: kept with the entry
    # A case-insensitive regex next to a case-sensitive literal: each keeps its own rule.
    assert orla.regex_keys and not orla.case_sensitive and orla.keys == ["captain\\s+\\w+", "(?-i:Orla)"]
    assert not orla.cascading_activation  # excludeRecursion
    assert orla.context_config.insertion_position == -3 and orla.context_config.budget_priority == 250
    assert tone.always_on and tone.disabled and tone.context_config.insertion_position == -4
    categories = {category.id: category.name for category in book.categories}
    assert categories[harbor.category] == "Places" and categories[orla.category] == "People" and tone.category == ""


def test_koboldai_lite_and_story_world_info():
    lite = read_lorebook(fixture("kobold-lite-world-info.json"), "kobold-lite-world-info.json")
    witch, mill, season = lite.entries
    assert witch.keys == ["witch", "hedge witch"] and witch.text.startswith("The hedge witch")
    assert mill.extra["koboldai"]["keysecondary"] == "river"
    assert season.always_on and season.disabled and season.keys == []
    names = {category.id: category.name for category in lite.categories}
    assert names[witch.category] == "People" and names[mill.category] == "Places"

    story = read_lorebook(fixture("kobold-story.json"), "kobold-story.json")
    ferry, bridge = story.entries
    assert ferry.keys == ["ferry", "ferryman"] and bridge.always_on
    assert {category.name for category in story.categories} == {"River folk"}
    assert story.category(ferry.category).name == "River folk"


def test_markdown_and_plain_text_stories():
    md = read_story(fixture("lighthouse.md"), "lighthouse.md")
    assert md.title == "The Lighthouse" and md.tags == ["sea", "night"] and md.origin == Origin.USER
    assert md.text == "The keeper climbed the stairs.\n\nBelow, the sea was *black*.\n"
    txt = read_story(fixture("lighthouse.txt"), "lighthouse.txt")
    assert txt.title == "lighthouse" and txt.text == "The keeper climbed the stairs.\nBelow, the sea was black.\n"


def novelai_book(**entry_overrides) -> dict:
    entry = {"text": "t", "displayName": "e", "id": "e1", "keys": ["k"], "enabled": True}
    entry.update(entry_overrides)
    return {"lorebookVersion": 5, "entries": [entry], "categories": []}


def refused(data, filename: str = "bad.lorebook") -> ImportRefused:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises(ImportRefused) as caught:
        read_lorebook(raw, filename)
    return caught.value


@pytest.mark.parametrize("overrides, path, words", [
    ({"keys": "dragon"}, "entries[0].keys", "must be a list"),
    ({"keys": ["ok", 7]}, "entries[0].keys[1]", "must be a string"),
    ({"enabled": "yes"}, "entries[0].enabled", "true or false"),
    ({"searchRange": -5}, "entries[0].searchRange", "between"),
    ({"contextConfig": {"trimDirection": "sideways"}}, "entries[0].contextConfig.trimDirection", "one of"),
    ({"contextConfig": {"tokenBudget": 12.5}}, "entries[0].contextConfig.tokenBudget", "whole number"),
    ({"text": "x" * (MAX_ENTRY_TEXT_CHARS + 1)}, "entries[0].text", "characters long"),
    ({"keys": ["/(a+)+$/"]}, "entries[0].keys[0]", "takes too long"),
    ({"keys": ["/(\\w+\\s?)+$/i"]}, "entries[0].keys[0]", "takes too long"),
    ({"keys": ["/unclosed(/"]}, "entries[0].keys[0]", "not a valid regular expression"),
    ({"category": "nowhere"}, "entries[0].category", "lacks"),
])
def test_hostile_novelai_entries_are_refused_naming_the_field(overrides, path, words):
    error = refused(novelai_book(**overrides))
    assert error.path == path and words in error.problem, str(error)


def test_category_loops_too_many_entries_nesting_and_garbage_are_refused():
    looped = {"lorebookVersion": 5, "entries": [], "categories": [
        {"id": "a", "name": "A", "categoryDefaults": {"category": "b"}},
        {"id": "b", "name": "B", "categoryDefaults": {"category": "a"}}]}
    assert refused(looped).path == "categories[0].categoryDefaults.category"
    twice = {"lorebookVersion": 5, "entries": [], "categories": [{"id": "a"}, {"id": "a"}]}
    assert refused(twice).path == "categories[1].id"
    many = {"lorebookVersion": 5, "entries": [{"text": "t", "id": str(i)} for i in range(MAX_ENTRIES + 1)]}
    assert refused(many).path == "entries"
    deep = ("[" * (MAX_JSON_DEPTH + 5) + "]" * (MAX_JSON_DEPTH + 5)).encode()
    assert "nests" in str(refused(deep, "deep.json"))
    assert "not valid JSON" in str(refused(b"{\"lorebookVersion\": 5,", "cut.lorebook"))
    assert "not UTF-8" in str(refused(b"\xff\xfe{}", "x.lorebook"))
    assert "not a lorebook" in str(refused({"something": "else"}, "other.json"))
    st = {"entries": {"0": {"key": ["a"], "content": "x", "order": "first"}}}
    assert refused(st, "st.json").path == "entries.0.order"
    kobold = [{"key": "a", "content": 5}]
    assert refused(kobold, "kobold.json").path == "[0].content"
    with pytest.raises(ImportRefused) as caught:
        read_story(json.dumps({"scenarioVersion": 3, "prompt": ["not", "text"]}).encode(), "x.scenario")
    assert caught.value.path == "prompt"
    with pytest.raises(ImportRefused) as caught:
        read_story(json.dumps({"scenarioVersion": 3, "lorebook": novelai_book(keys=["/(x+x+)+y/"])}).encode(),
                   "x.scenario")
    assert caught.value.path == "lorebook.entries[0].keys[0]"

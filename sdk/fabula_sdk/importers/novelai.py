"""NovelAI's `.lorebook` and `.scenario` files (JSON) as Fabula documents.

A lorebook file is `{"lorebookVersion": n, "entries": [...], "categories": [...], "settings"}`;
a scenario is `{"scenarioVersion": n, "title", "description", "prompt", "tags", "context":
[memory, author's note], "settings": {"parameters", "preset", "model", ...}, "lorebook",
"placeholders", "storyContextConfig", ...}`. The mapping, field by field, and what is dropped is
the table in docs/formats.md ("Importing"). Fields with no Fabula counterpart are kept in the
document's unknown fields under `novelai` (so nothing is lost and a later exporter can give
them back); placeholders (`${name}`) stay in the text as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fabula_sdk.documents.context import (
    ContextConfig, TextUnit, TrimDirection, authors_note_config, lorebook_entry_config, memory_config, story_config,
)
from fabula_sdk.documents.lorebook import Lorebook, LorebookCategory, LorebookEntry, new_entry_id
from fabula_sdk.documents.preset import Preset, SamplerName, SamplerStep, Sampling, complete_sampler_order
from fabula_sdk.documents.story import AuthorsNote, Memory, StorySettings
from fabula_sdk.importers.checks import (
    MAX_CATEGORIES, MAX_ENTRIES, MAX_NAME_CHARS, MAX_STORY_TEXT_CHARS, ImportRefused, Reader, check_regex,
)

# NovelAI writes budgets and reservations at or below 1 as a share of the model's context; Fabula
# counts tokens, so a share is converted at this context size (NovelAI's largest common one).
ASSUMED_CONTEXT_TOKENS = 8192

_TRIM = {"trimTop": TrimDirection.TOP, "trimBottom": TrimDirection.BOTTOM, "doNotTrim": TrimDirection.NONE}
_UNIT = {"newline": TextUnit.NEWLINE, "sentence": TextUnit.SENTENCE, "token": TextUnit.TOKEN}
# NovelAI writes a regex key as /pattern/flags.
_REGEX_KEY = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)
# NovelAI's sampler ids → Fabula's; the others in its order (e.g. mirostat, cfg) have none.
_SAMPLERS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "top_a": "top_a",
             "typical_p": "typical_p", "tfs": "tail_free", "tail_free_sampling": "tail_free", "min_p": "min_p"}
# NovelAI's generation parameters → Sampling's fields.
_PARAMETERS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "top_a": "top_a",
               "typical_p": "typical_p", "tail_free_sampling": "tail_free", "min_p": "min_p",
               "repetition_penalty": "repetition_penalty", "repetition_penalty_range": "repetition_penalty_range",
               "repetition_penalty_slope": "repetition_penalty_slope",
               "repetition_penalty_frequency": "frequency_penalty",
               "repetition_penalty_presence": "presence_penalty"}
_INTEGER_PARAMETERS = {"top_k", "repetition_penalty_range"}

ENTRY_FIELDS = {"text", "contextConfig", "displayName", "id", "keys", "searchRange", "enabled", "forceActivation",
                "keyRelative", "nonStoryActivatable", "category"}
CATEGORY_FIELDS = {"name", "id", "enabled", "createSubcontext", "subcontextSettings", "useCategoryDefaults",
                   "categoryDefaults"}


def _tokens(reader: Reader, key: str, default: int, *, whole: int) -> int:
    """Tokens from a NovelAI budget: a whole number of tokens, or a share of the context (0 < x <= 1),
    where the whole context is `whole`."""
    value = reader.number(key, None, minimum=0, maximum=2**31 - 1)
    if value is None:
        return default
    if 0 < value <= 1:
        return whole if value == 1 else max(1, round(value * ASSUMED_CONTEXT_TOKENS))
    if value != int(value):
        raise ImportRefused(reader.at(key), f"must be a whole number of tokens or a share up to 1, not {value}")
    return int(value)


def context_config(reader: Reader | None, defaults: ContextConfig) -> ContextConfig:
    """NovelAI's contextConfig over `defaults` (the part's own defaults for missing fields)."""
    config = ContextConfig(**{name: getattr(defaults, name) for name in (
        "prefix", "suffix", "token_budget", "reserved_tokens", "budget_priority", "trim_direction",
        "maximum_trim_type", "insertion_type", "insertion_position")})
    if reader is None:
        return config
    config.prefix = reader.string("prefix", config.prefix)
    config.suffix = reader.string("suffix", config.suffix)
    # A budget of the whole context is Fabula's "no limit" (0).
    config.token_budget = _tokens(reader, "tokenBudget", config.token_budget, whole=0)
    config.reserved_tokens = _tokens(reader, "reservedTokens", config.reserved_tokens, whole=ASSUMED_CONTEXT_TOKENS)
    priority = reader.integer("budgetPriority", config.budget_priority)
    config.budget_priority = config.budget_priority if priority is None else priority
    for key, table, name in (("trimDirection", _TRIM, "trim_direction"),
                             ("maximumTrimType", _UNIT, "maximum_trim_type"),
                             ("insertionType", _UNIT, "insertion_type")):
        value = reader.string(key, "")
        if value:
            if value not in table:
                raise ImportRefused(reader.at(key), f"must be one of {', '.join(table)}, not {value!r}")
            setattr(config, name, table[value])
    position = reader.integer("insertionPosition", config.insertion_position)
    config.insertion_position = config.insertion_position if position is None else position
    rest = reader.rest({"prefix", "suffix", "tokenBudget", "reservedTokens", "budgetPriority", "trimDirection",
                        "maximumTrimType", "insertionType", "insertionPosition"})
    if rest:
        config.extra["novelai"] = rest
    return config


def _keys(reader: Reader, path: str) -> tuple[list[str], bool, bool]:
    """(keys, regex_keys, case_sensitive). Literal keys are case-insensitive in NovelAI; a regex
    key is case-sensitive unless it has the i flag. When literal and regex keys are mixed, every
    key becomes a regex (literals escaped) and a key's own case rule is kept inline."""
    raw = reader.strings("keys")
    parsed = []
    for index, key in enumerate(raw):
        match = _REGEX_KEY.match(key)
        if match:
            pattern, flags = match.group(1), match.group(2)
            check_regex(pattern, f"{path}.keys[{index}]", case_sensitive="i" not in flags)
            parsed.append((pattern, True, "i" not in flags))
        else:
            parsed.append((key, False, False))
    if not any(is_regex for _, is_regex, _ in parsed):
        return raw, False, False
    if all(is_regex for _, is_regex, _ in parsed) and len({sensitive for *_, sensitive in parsed}) == 1:
        return [pattern for pattern, *_ in parsed], True, parsed[0][2]
    keys = []
    for text, is_regex, sensitive in parsed:
        pattern = text if is_regex else re.escape(text)
        keys.append(f"(?-i:{pattern})" if sensitive else pattern)
    return keys, True, False


def lorebook_entry(reader: Reader, *, categories: set[str], defaults: ContextConfig | None = None) -> LorebookEntry:
    path = reader.path
    keys, regex_keys, case_sensitive = _keys(reader, path)
    category = reader.string("category", "", limit=MAX_NAME_CHARS)
    if category and category not in categories:
        raise ImportRefused(reader.at("category"), f"names the category {category!r}, which the lorebook lacks")
    entry = LorebookEntry(
        id=reader.string("id", "", limit=MAX_NAME_CHARS) or new_entry_id(),
        name=reader.string("displayName", "", limit=MAX_NAME_CHARS),
        text=reader.string("text"),
        keys=keys, regex_keys=regex_keys, case_sensitive=case_sensitive,
        scan_depth_chars=reader.integer("searchRange", 0, minimum=0),  # type: ignore[arg-type]
        always_on=reader.boolean("forceActivation"),
        disabled=not reader.boolean("enabled", True),
        key_relative=reader.boolean("keyRelative"),
        cascading_activation=reader.boolean("nonStoryActivatable"),
        category=category,
        context_config=context_config(reader.child("contextConfig"), defaults or lorebook_entry_config()),
    )
    rest = reader.rest(ENTRY_FIELDS)
    if rest:
        entry.extra["novelai"] = rest
    return entry


def lorebook_from_json(data: Any, *, name: str = "", path: str = "") -> Lorebook:
    """A NovelAI lorebook object (a `.lorebook` file, or a scenario's `lorebook`) as a Lorebook."""
    reader = Reader(data, path)
    if reader.has("lorebookVersion"):
        reader.integer("lorebookVersion", minimum=1, maximum=1000)
    raw_categories = reader.items("categories", limit=MAX_CATEGORIES)
    category_ids: list[str] = []
    for index, raw in enumerate(raw_categories):
        category_ids.append(Reader(raw, f"{reader.at('categories')}[{index}]").string("id", "", limit=MAX_NAME_CHARS)
                            or f"category-{index}")
    seen: dict[str, int] = {}
    for index, id in enumerate(category_ids):
        if id in seen:
            raise ImportRefused(f"{reader.at('categories')}[{index}].id", f"repeats the id of categories[{seen[id]}]")
        seen[id] = index
    known = set(category_ids)
    categories = [_category(Reader(raw, f"{reader.at('categories')}[{index}]"), category_ids[index], known)
                  for index, raw in enumerate(raw_categories)]
    entries = [lorebook_entry(Reader(raw, f"{reader.at('entries')}[{index}]"), categories=known)
               for index, raw in enumerate(reader.items("entries", limit=MAX_ENTRIES))]
    ids: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.id in ids:
            raise ImportRefused(f"{reader.at('entries')}[{index}].id", f"repeats the id of entries[{ids[entry.id]}]")
        ids[entry.id] = index
    lorebook = Lorebook(name=name, entries=entries, categories=categories)
    rest = reader.rest({"lorebookVersion", "entries", "categories"})
    if rest:
        lorebook.extra["novelai"] = rest
    return lorebook


def _category(reader: Reader, id: str, known: set[str]) -> LorebookCategory:
    """A category. Its defaults and sub-context settings are entry templates; one that names a
    category must name this one, else categories would refer to each other in a loop."""
    templates = {}
    for key in ("subcontextSettings", "categoryDefaults"):
        child = reader.child(key)
        if child is not None:
            named = child.string("category", "", limit=MAX_NAME_CHARS)
            if named and named != id:
                raise ImportRefused(child.at("category"), f"names the category {named!r}: a category's {key} may "
                                                          "only name the category itself (categories do not nest)")
            templates[key] = child
    sub = templates.get("subcontextSettings")
    defaults = templates.get("categoryDefaults")
    category = LorebookCategory(
        id=id, name=reader.string("name", "", limit=MAX_NAME_CHARS), enabled=reader.boolean("enabled", True),
        create_subcontext=reader.boolean("createSubcontext"),
        subcontext_config=context_config(sub.child("contextConfig") if sub else None, lorebook_entry_config()),
        use_category_defaults=reader.boolean("useCategoryDefaults"),
    )
    if defaults is not None:
        template = lorebook_entry(defaults, categories=known | {id})
        template.id, template.category = "", id
        category.category_defaults = template
    rest = reader.rest(CATEGORY_FIELDS)
    if sub is not None:
        sub_rest = sub.rest({"contextConfig"})
        if sub_rest:
            rest["subcontextSettings"] = sub_rest
    if rest:
        category.extra["novelai"] = rest
    return category


# --- scenarios -----------------------------------------------------------------------------


@dataclass
class ImportedScenario:
    """A scenario's documents, built and checked; nothing is stored yet."""

    title: str
    description: str
    tags: list[str]
    prompt: str
    memory: Memory
    authors_note: AuthorsNote
    story_config: ContextConfig
    settings: StorySettings
    lorebook: Lorebook
    preset: Preset | None
    extra: dict[str, Any] = field(default_factory=dict)


def _preset(parameters: Reader, name: str) -> Preset:
    values: dict[str, Any] = {}
    for source, target in _PARAMETERS.items():
        if source in _INTEGER_PARAMETERS:
            value = parameters.integer(source, None, minimum=0)
        else:
            value = parameters.number(source, None)
        if value is not None:
            values[target] = value
    order = []
    for index, raw in enumerate(parameters.items("order", limit=32)):
        if isinstance(raw, int) and not isinstance(raw, bool):
            # Old files number the samplers: 0 temperature, 1 top_k, 2 top_p, 3 tfs, 4 top_a, 5 typical_p.
            names = ["temperature", "top_k", "top_p", "tfs", "top_a", "typical_p"]
            if not 0 <= raw < len(names):
                raise ImportRefused(f"{parameters.at('order')}[{index}]", f"unknown sampler number {raw}")
            sampler_id, enabled = names[raw], True
        else:
            step = Reader(raw, f"{parameters.at('order')}[{index}]")
            sampler_id, enabled = step.string("id", "", limit=64), step.boolean("enabled", True)
        if sampler_id in _SAMPLERS and all(step.sampler != _SAMPLERS[sampler_id] for step in order):
            order.append(SamplerStep(SamplerName(_SAMPLERS[sampler_id]), enabled))
    max_new = parameters.integer("max_length", None, minimum=1, maximum=100_000)
    min_new = parameters.integer("min_length", 0, minimum=0, maximum=100_000)
    # NovelAI leaves out samplers it does not use; the text service wants each one named.
    order = complete_sampler_order(order) if order else []
    preset = Preset(name=name, sampling=Sampling(**values), sampler_order=order, max_new_tokens=max_new,
                    min_new_tokens=min_new or 0)
    rest = parameters.rest(set(_PARAMETERS) | {"order", "max_length", "min_length"})
    if rest:
        preset.extra["novelai"] = rest
    return preset


def scenario_from_json(data: Any) -> ImportedScenario:
    reader = Reader(data, "")
    if not reader.has("scenarioVersion"):
        raise ImportRefused("scenarioVersion", "is missing: not a NovelAI scenario")
    reader.integer("scenarioVersion", minimum=0, maximum=1000)
    title = reader.string("title", "", limit=MAX_NAME_CHARS)
    contexts = reader.items("context", limit=2)
    texts: list[tuple[str, Reader | None]] = []
    for index, raw in enumerate(contexts):
        item = Reader(raw, f"context[{index}]")
        texts.append((item.string("text"), item.child("contextConfig")))
    memory_text, memory_reader = texts[0] if texts else ("", None)
    note_text, note_reader = texts[1] if len(texts) > 1 else ("", None)
    settings = StorySettings()
    preset = None
    settings_reader = reader.child("settings")
    extra: dict[str, Any] = {}
    if settings_reader is not None:
        settings.text_model = settings_reader.string("model", "", limit=MAX_NAME_CHARS)
        parameters = settings_reader.child("parameters")
        if parameters is not None:
            preset = _preset(parameters, settings_reader.string("preset", "", limit=MAX_NAME_CHARS)
                             or f"{title or 'Scenario'} settings")
            preset.text_model = settings.text_model
        rest = settings_reader.rest({"model", "parameters", "preset"})
        if rest:
            extra["settings"] = rest
    lorebook_data = data.get("lorebook")
    lorebook = (lorebook_from_json(lorebook_data, name=f"{title} lorebook".strip(), path="lorebook")
                if lorebook_data is not None else Lorebook(name=f"{title} lorebook".strip()))
    scenario = ImportedScenario(
        title=title,
        description=reader.string("description", "", limit=MAX_STORY_TEXT_CHARS),
        tags=reader.strings("tags", limit=200, chars=MAX_NAME_CHARS),
        prompt=reader.string("prompt", "", limit=MAX_STORY_TEXT_CHARS),
        memory=Memory(memory_text, context_config(memory_reader, memory_config())),
        authors_note=AuthorsNote(note_text, context_config(note_reader, authors_note_config())),
        story_config=context_config(reader.child("storyContextConfig"), story_config()),
        settings=settings,
        lorebook=lorebook,
        preset=preset,
    )
    rest = reader.rest({"scenarioVersion", "title", "description", "tags", "prompt", "context", "settings",
                        "lorebook", "storyContextConfig"})
    extra.update(rest)
    scenario.extra = extra
    return scenario

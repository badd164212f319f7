"""What a storytelling request sends — story, memory, author's note, lorebook, categories, and
each part's context settings — and `check_inputs`, which checks it and resolves every part's
settings (its own, then its category's defaults, then the part's defaults) before any tokenizing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

# Lorebook keys use the `regex` package rather than `re` for its per-search timeout: a user's
# pattern with catastrophic backtracking must end in a clear error, not a stalled worker.
import regex

from fabula_wire.story_context import (
    MAX_AFFIX_CHARS,
    MAX_AUTHORS_NOTE_DEPTH,
    MAX_CATEGORIES,
    MAX_KEY_CHARS,
    MAX_KEYS_PER_ENTRY,
    MAX_LOREBOOK_ENTRIES,
    MAX_PART_CHARS,
    MAX_POSITION,
)
from services.text.context_units import TextUnit, TrimDirection
from services.toolkit.errors import InvalidArgument

DEFAULT_AUTHORS_NOTE_DEPTH = 3
MAX_TOKENS_FIELD = 2**32 - 1  # token_budget, reserved_tokens (protobuf uint32)
# Reserving this many tokens reserves a part's whole size (reservations never exceed it).
WHOLE = MAX_TOKENS_FIELD


@dataclass(frozen=True)
class LorebookLimits:
    """What one request's lorebook may cost (the text service's `lorebook_*` settings)."""

    max_keys: int = 8192  # keys of all entries together (an entry's category defaults included)
    max_key_chars: int = 262_144  # their characters together
    # Characters the regular-expression keys would scan together: each key × the story text it
    # scans (twice for a key-relative entry), plus, for a cascading entry, × every entry's text.
    max_regex_scan_chars: int = 200_000_000
    search_s: float = 0.05  # one search of one key
    total_s: float = 2.0  # every search of the request together, literal keys included


@dataclass(frozen=True)
class ContextConfig:
    """How one part is budgeted, trimmed and placed. None = unset: `over` fills it from a
    fallback, and a resolved config (after `check_inputs`) has no None left."""

    prefix: str | None = None
    suffix: str | None = None
    token_budget: int | None = None  # 0 = no limit of its own
    reserved_tokens: int | None = None
    budget_priority: int | None = None
    trim_direction: TrimDirection | None = None
    maximum_trim_type: TextUnit | None = None
    insertion_type: TextUnit | None = None
    insertion_position: int | None = None

    def over(self, fallback: ContextConfig) -> ContextConfig:
        """This config with its unset fields taken from `fallback`."""
        return ContextConfig(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                                else getattr(fallback, f.name) for f in fields(self)})


# NovelAI's defaults. The author's note reserves its whole size so the story (placed before it)
# cannot crowd it out.
STORY_DEFAULTS = ContextConfig("", "", 0, 512, 0, TrimDirection.TOP, TextUnit.SENTENCE, TextUnit.NEWLINE, -1)
MEMORY_DEFAULTS = ContextConfig("", "", 0, 0, 800, TrimDirection.BOTTOM, TextUnit.SENTENCE, TextUnit.NEWLINE, 0)
AUTHORS_NOTE_DEFAULTS = ContextConfig("", "", 0, WHOLE, -400, TrimDirection.BOTTOM, TextUnit.SENTENCE,
                                      TextUnit.NEWLINE, -(DEFAULT_AUTHORS_NOTE_DEPTH + 1))
ENTRY_DEFAULTS = ContextConfig("", "", 0, 0, 400, TrimDirection.BOTTOM, TextUnit.SENTENCE, TextUnit.NEWLINE, -1)


@dataclass(frozen=True)
class LoreEntry:
    name: str
    text: str
    keys: tuple[str, ...]
    regex_keys: bool = False
    case_sensitive: bool = False
    scan_depth_chars: int = 0
    always_on: bool = False
    # The older placement fields, used only when `context_config` is None.
    insertion_order: int = 0
    insertion_position: int = 0
    token_budget: int = 0
    disabled: bool = False
    id: str = ""
    key_relative: bool = False
    cascading_activation: bool = False
    category: str = ""
    context_config: ContextConfig | None = None
    patterns: tuple[regex.Pattern[str], ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class LoreCategory:
    id: str
    name: str = ""
    enabled: bool = True
    create_subcontext: bool = False
    subcontext_config: ContextConfig = ContextConfig()
    use_category_defaults: bool = False
    category_defaults: LoreEntry | None = None


@dataclass(frozen=True)
class StoryContext:
    story: str
    memory: str = ""
    authors_note: str = ""
    authors_note_depth: int = DEFAULT_AUTHORS_NOTE_DEPTH
    lorebook: tuple[LoreEntry, ...] = ()
    max_context_tokens: int = 0
    memory_config: ContextConfig = ContextConfig()
    authors_note_config: ContextConfig = ContextConfig()
    story_config: ContextConfig = ContextConfig()
    lorebook_categories: tuple[LoreCategory, ...] = ()


def legacy_entry_config(entry: LoreEntry) -> ContextConfig:
    """The context settings an entry sent with only the older flat fields gets. The old builder
    fitted every triggered entry before the story, cut it at any token to its token budget, and
    placed it either just before the story
    (position >= 0) or -position lines above the story's end; reserving the entry's whole size and
    placing it before (priority 400 + order) or after (-1000 + order) the story keeps that."""
    if entry.insertion_position >= 0:
        return ContextConfig(token_budget=entry.token_budget, reserved_tokens=WHOLE,
                             maximum_trim_type=TextUnit.TOKEN,
                             budget_priority=400 + entry.insertion_order, insertion_position=-1)
    return ContextConfig(token_budget=entry.token_budget, reserved_tokens=WHOLE, maximum_trim_type=TextUnit.TOKEN,
                         budget_priority=-1000 + entry.insertion_order,
                         insertion_position=entry.insertion_position - 1)


def check_config(config: ContextConfig, where: str) -> None:
    """Enum values a newer client may send, and sizes, refused by field name."""
    for name in ("prefix", "suffix"):
        value = getattr(config, name)
        if value is not None and len(value) > MAX_AFFIX_CHARS:
            raise InvalidArgument(f"{where}.{name}", value, f"at most {MAX_AFFIX_CHARS} characters")
    if config.trim_direction is not None and not isinstance(config.trim_direction, TrimDirection):
        raise InvalidArgument(f"{where}.trim_direction", config.trim_direction, "unknown trim direction")
    for name in ("maximum_trim_type", "insertion_type"):
        value = getattr(config, name)
        if value is not None and not isinstance(value, TextUnit):
            raise InvalidArgument(f"{where}.{name}", value, "unknown unit; newline, sentence or token")
    for name in ("budget_priority", "insertion_position"):
        value = getattr(config, name)
        if value is not None and abs(value) > MAX_POSITION:
            raise InvalidArgument(f"{where}.{name}", value, f"must be within ±{MAX_POSITION}")
    for name in ("token_budget", "reserved_tokens"):
        value = getattr(config, name)
        if value is not None and not 0 <= value <= MAX_TOKENS_FIELD:
            raise InvalidArgument(f"{where}.{name}", value, f"must be 0 to {MAX_TOKENS_FIELD}")


def check_inputs(context: StoryContext, max_story_chars: int, prefix: str = "spec.context.",
                 limits: LorebookLimits = LorebookLimits()) -> StoryContext:
    """The context with its sizes and references checked, every part's settings resolved (no
    None left), its keys compiled and every entry named (an unnamed one after its place in the
    lorebook, for the report). The lorebook's keys together are checked against `limits` before
    any of them is compiled."""
    if len(context.story) > max_story_chars:
        raise InvalidArgument(f"{prefix}story", context.story, f"at most {max_story_chars} characters")
    for name in ("memory", "authors_note"):
        if len(getattr(context, name)) > MAX_PART_CHARS:
            raise InvalidArgument(f"{prefix}{name}", getattr(context, name), f"at most {MAX_PART_CHARS} characters")
    if context.authors_note_depth > MAX_AUTHORS_NOTE_DEPTH:
        raise InvalidArgument(f"{prefix}authors_note_depth", context.authors_note_depth,
                              f"at most {MAX_AUTHORS_NOTE_DEPTH} lines")
    if len(context.lorebook) > MAX_LOREBOOK_ENTRIES:
        raise InvalidArgument(f"{prefix}lorebook", len(context.lorebook), f"at most {MAX_LOREBOOK_ENTRIES} entries")
    if len(context.lorebook_categories) > MAX_CATEGORIES:
        raise InvalidArgument(f"{prefix}lorebook_categories", len(context.lorebook_categories),
                              f"at most {MAX_CATEGORIES} categories")
    for name in ("memory_config", "authors_note_config", "story_config"):
        check_config(getattr(context, name), f"{prefix}{name}")
    note_config = context.authors_note_config
    if note_config.insertion_position is None:
        note_config = replace(note_config, insertion_position=-(context.authors_note_depth + 1))
    categories = check_categories(context.lorebook_categories, f"{prefix}lorebook_categories")
    check_key_totals(context.lorebook, categories, limits, prefix)
    checked, ids = [], set()
    for index, entry in enumerate(context.lorebook):
        where = f"{prefix}lorebook[{index}]"
        if entry.id:
            if entry.id in ids:
                raise InvalidArgument(f"{where}.id", entry.id, "duplicate entry id")
            ids.add(entry.id)
        if entry.category and entry.category not in categories:
            raise InvalidArgument(f"{where}.category", entry.category,
                                  "no such id in lorebook_categories")
        checked.append(check_entry(entry, categories.get(entry.category), where, f"entry {index}"))
    return replace(context, lorebook=tuple(checked), lorebook_categories=tuple(categories.values()),
                   memory_config=context.memory_config.over(MEMORY_DEFAULTS),
                   authors_note_config=note_config.over(AUTHORS_NOTE_DEFAULTS),
                   story_config=context.story_config.over(STORY_DEFAULTS))


def check_key_totals(lorebook: tuple[LoreEntry, ...], categories: dict[str, LoreCategory], limits: LorebookLimits,
                     prefix: str = "spec.context.") -> None:
    """The keys of every entry together (an entry without keys counted with its category's default
    keys) within `limits`, checked before any key is compiled."""
    keys = chars = 0
    for entry in lorebook:
        own = entry.keys
        category = categories.get(entry.category)
        if not own and category is not None and category.use_category_defaults and category.category_defaults:
            own = category.category_defaults.keys
        keys += len(own)
        chars += sum(len(key) for key in own)
    if keys > limits.max_keys:
        raise InvalidArgument(f"{prefix}lorebook", f"{keys} keys",
                              f"at most {limits.max_keys} keys in all the entries together")
    if chars > limits.max_key_chars:
        raise InvalidArgument(f"{prefix}lorebook", f"{chars} key characters",
                              f"at most {limits.max_key_chars} characters of keys in all the entries together")


def check_categories(categories: tuple[LoreCategory, ...], where: str) -> dict[str, LoreCategory]:
    """The categories by id, their sub-context settings resolved over the entry defaults."""
    by_id: dict[str, LoreCategory] = {}
    for index, category in enumerate(categories):
        at = f"{where}[{index}]"
        if not category.id:
            raise InvalidArgument(f"{at}.id", category.id, "a category needs an id")
        if category.id in by_id:
            raise InvalidArgument(f"{at}.id", category.id, "duplicate category id")
        check_config(category.subcontext_config, f"{at}.subcontext_config")
        template = category.category_defaults
        if template is not None:
            # The template belongs to this category; naming another would make entries' defaults
            # depend on a chain of categories (and allow a loop).
            if template.category and template.category != category.id:
                raise InvalidArgument(f"{at}.category_defaults.category", template.category,
                                      "must be empty or this category's id")
            if template.context_config is not None:
                check_config(template.context_config, f"{at}.category_defaults.context_config")
            if len(template.keys) > MAX_KEYS_PER_ENTRY:
                raise InvalidArgument(f"{at}.category_defaults.keys", len(template.keys),
                                      f"at most {MAX_KEYS_PER_ENTRY} keys")
        by_id[category.id] = replace(category, name=category.name or category.id,
                                     subcontext_config=category.subcontext_config.over(ENTRY_DEFAULTS))
    return by_id


def check_entry(entry: LoreEntry, category: LoreCategory | None, where: str, fallback_name: str) -> LoreEntry:
    """One entry checked, its category's defaults applied, its settings resolved, keys compiled."""
    if len(entry.text) > MAX_PART_CHARS:
        raise InvalidArgument(f"{where}.text", entry.text, f"at most {MAX_PART_CHARS} characters")
    if len(entry.keys) > MAX_KEYS_PER_ENTRY:
        raise InvalidArgument(f"{where}.keys", len(entry.keys), f"at most {MAX_KEYS_PER_ENTRY} keys")
    if entry.context_config is not None:
        check_config(entry.context_config, f"{where}.context_config")
    own = entry.context_config if entry.context_config is not None else legacy_entry_config(entry)
    config = own
    template = category.category_defaults if category and category.use_category_defaults else None
    if template is not None:
        if template.context_config is not None:
            config = own.over(template.context_config)
        if not entry.keys and template.keys:
            entry = replace(entry, keys=template.keys, regex_keys=template.regex_keys,
                            case_sensitive=template.case_sensitive)
        if not entry.scan_depth_chars:
            entry = replace(entry, scan_depth_chars=template.scan_depth_chars)
    entry = replace(entry, context_config=config.over(ENTRY_DEFAULTS), name=entry.name or fallback_name)
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
    return replace(entry, patterns=tuple(patterns))

"""SillyTavern and KoboldAI World Info files (JSON) as Fabula lorebooks.

**SillyTavern** (`{"entries": {"0": {...}, "1": {...}}}`, or a list): an entry has `key` and
`keysecondary` (lists; a key written `/pattern/flags` is a regex), `comment` (its title),
`content`, `constant`, `disable`, `order`, `position` (0 before / 1 after the character
definitions, 2 top / 3 bottom of the author's note, 4 at `depth` messages from the end, 5 / 6
around the example messages), `depth`, `caseSensitive`, `excludeRecursion`, `group`, ...

**KoboldAI** (KoboldAI Lite's export is a list of entries; a KoboldAI story has `worldinfo`
with `wifolders_d`): `key` and `keysecondary` as comma-separated text, `content`, `comment`,
`constant`, `selective`, `widisabled`, `wigroup` / `folder`.

The field mapping and what is kept or dropped is the table in docs/formats.md ("Importing").
Fields with no Fabula counterpart are kept in the entry's unknown fields under `sillytavern` /
`koboldai`.
"""

from __future__ import annotations

import re
from typing import Any

from fabula_sdk.documents.context import lorebook_entry_config
from fabula_sdk.documents.lorebook import Lorebook, LorebookCategory, LorebookEntry, new_entry_id
from fabula_sdk.importers.checks import (
    MAX_CATEGORIES, MAX_ENTRIES, MAX_KEY_CHARS, MAX_KEYS_PER_ENTRY, MAX_NAME_CHARS, ImportRefused, Reader,
    check_regex, describe,
)

_REGEX_KEY = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)

# SillyTavern's insertion position → Fabula's insertion_position (in newlines from the top, or
# from the end when negative). Fabula's context has no character definitions or example
# messages, so "before/after the character" and the example messages go to the top, next to
# memory; the author's note positions go where the author's note goes by default.
_ST_POSITIONS = {0: 0, 1: 0, 2: -4, 3: -4, 5: 0, 6: 0}
ST_AT_DEPTH = 4
ST_FIELDS = {"uid", "key", "comment", "content", "constant", "disable", "order", "position", "depth",
             "caseSensitive", "excludeRecursion", "group"}


def _keys(raw: list[str], path: str, case_sensitive: bool) -> tuple[list[str], bool, bool]:
    """(keys, regex_keys, case_sensitive); with any regex key all become regexes (literals escaped)."""
    parsed = []
    for index, key in enumerate(raw):
        match = _REGEX_KEY.match(key)
        if match:
            sensitive = "i" not in match.group(2)
            check_regex(match.group(1), f"{path}[{index}]", case_sensitive=sensitive)
            parsed.append((match.group(1), True, sensitive))
        else:
            parsed.append((key, False, case_sensitive))
    if not any(is_regex for _, is_regex, _ in parsed):
        return raw, False, case_sensitive
    if len({sensitive for *_, sensitive in parsed}) == 1:
        return [text if is_regex else re.escape(text) for text, is_regex, _ in parsed], True, parsed[0][2]
    keys = []
    for text, is_regex, sensitive in parsed:
        pattern = text if is_regex else re.escape(text)
        keys.append(f"(?-i:{pattern})" if sensitive else pattern)
    return keys, True, False


def _categories(groups: list[str]) -> tuple[list[LorebookCategory], dict[str, str]]:
    if len(groups) > MAX_CATEGORIES:
        raise ImportRefused("entries", f"use {len(groups)} groups; at most {MAX_CATEGORIES} are imported")
    categories, ids = [], {}
    for group in groups:
        category = LorebookCategory(id=new_entry_id(), name=group)
        categories.append(category)
        ids[group] = category.id
    return categories, ids


# --- SillyTavern -----------------------------------------------------------------------------


def is_sillytavern(data: Any) -> bool:
    if not isinstance(data, dict) or "entries" not in data:
        return False
    entries = data["entries"]
    sample = next(iter(entries.values()), None) if isinstance(entries, dict) else (
        entries[0] if isinstance(entries, list) and entries else None)
    return isinstance(entries, dict) or isinstance(sample, dict) and "content" in sample and "key" in sample


def sillytavern_from_json(data: Any, *, name: str = "") -> Lorebook:
    reader = Reader(data, "")
    raw = data.get("entries")
    if isinstance(raw, dict):
        items = [(f"entries.{key}", value) for key, value in raw.items()]
    elif isinstance(raw, list):
        items = [(f"entries[{index}]", value) for index, value in enumerate(raw)]
    else:
        raise ImportRefused("entries", f"must be an object or a list of entries, not {describe(raw)}")
    if len(items) > MAX_ENTRIES:
        raise ImportRefused("entries", f"has {len(items)} entries; at most {MAX_ENTRIES} are imported")
    readers = [Reader(value, path) for path, value in items]
    groups: list[str] = []
    for entry in readers:
        for group in (part.strip() for part in entry.string("group", "", limit=MAX_NAME_CHARS).split(",")):
            if group and group not in groups:
                groups.append(group)
    categories, category_ids = _categories(groups)
    entries = [_sillytavern_entry(entry, category_ids) for entry in readers]
    lorebook = Lorebook(name=name or reader.string("name", "", limit=MAX_NAME_CHARS),
                        description=reader.string("description", "", limit=MAX_NAME_CHARS),
                        entries=entries, categories=categories)
    rest = reader.rest({"entries", "name", "description"})
    if rest:
        lorebook.extra["sillytavern"] = rest
    return lorebook


def _sillytavern_entry(reader: Reader, category_ids: dict[str, str]) -> LorebookEntry:
    case_sensitive = reader.boolean("caseSensitive", False)
    keys, regex_keys, case_sensitive = _keys(reader.strings("key"), reader.at("key"), case_sensitive)
    for index, key in enumerate(reader.strings("keysecondary")):
        match = _REGEX_KEY.match(key)
        if match:
            check_regex(match.group(1), f"{reader.at('keysecondary')}[{index}]", case_sensitive=False)
    config = lorebook_entry_config()
    position = reader.integer("position", 0, minimum=0, maximum=7)
    if position == ST_AT_DEPTH:
        config.insertion_position = -1 - reader.integer("depth", 4, minimum=0, maximum=10_000)  # type: ignore[operator]
    elif position in _ST_POSITIONS:
        config.insertion_position = _ST_POSITIONS[position]  # type: ignore[index]
    order = reader.integer("order", 100)
    config.budget_priority = 100 if order is None else order
    group = reader.string("group", "", limit=MAX_NAME_CHARS).split(",")[0].strip()
    uid = reader.data.get("uid")
    entry = LorebookEntry(
        id=str(uid) if isinstance(uid, int | str) and not isinstance(uid, bool) and str(uid) else new_entry_id(),
        name=reader.string("comment", "", limit=MAX_NAME_CHARS),
        text=reader.string("content"),
        keys=keys, regex_keys=regex_keys, case_sensitive=case_sensitive,
        always_on=reader.boolean("constant"),
        disabled=reader.boolean("disable"),
        cascading_activation=not reader.boolean("excludeRecursion"),
        category=category_ids.get(group, ""),
        context_config=config,
    )
    rest = reader.rest(ST_FIELDS)
    if rest:
        entry.extra["sillytavern"] = rest
    return entry


# --- KoboldAI --------------------------------------------------------------------------------


def is_koboldai(data: Any) -> bool:
    if isinstance(data, dict) and isinstance(data.get("worldinfo"), list):
        return True
    return (isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "content" in data[0]
            and "key" in data[0])


def _comma_keys(reader: Reader, key: str) -> list[str]:
    value = reader.data.get(key)
    if value is None:
        return []
    if isinstance(value, list):
        return reader.strings(key)
    text = reader.string(key, "", limit=MAX_KEYS_PER_ENTRY * MAX_KEY_CHARS)
    keys = [part.strip() for part in text.split(",") if part.strip()]
    if len(keys) > MAX_KEYS_PER_ENTRY:
        raise ImportRefused(reader.at(key), f"has {len(keys)} keys; at most {MAX_KEYS_PER_ENTRY} are imported")
    for index, part in enumerate(keys):
        if len(part) > MAX_KEY_CHARS:
            raise ImportRefused(f"{reader.at(key)}[{index}]", f"is {len(part)} characters; at most {MAX_KEY_CHARS}")
    return keys


KOBOLD_FIELDS = {"key", "content", "comment", "constant", "widisabled", "wigroup", "folder", "uid"}


def koboldai_from_json(data: Any, *, name: str = "") -> Lorebook:
    folders: dict[str, str] = {}
    if isinstance(data, dict):
        reader = Reader(data, "")
        raw_entries = reader.items("worldinfo", limit=MAX_ENTRIES)
        base = "worldinfo"
        names = reader.child("wifolders_d")
        if names is not None:
            for uid, folder in names.data.items():
                folders[str(uid)] = Reader(folder, names.at(str(uid))).string("name", str(uid), limit=MAX_NAME_CHARS)
    elif isinstance(data, list):
        if len(data) > MAX_ENTRIES:
            raise ImportRefused("(top level)", f"has {len(data)} entries; at most {MAX_ENTRIES} are imported")
        raw_entries, base = data, ""
    else:
        raise ImportRefused("(top level)", f"must be a list of entries or an object, not {describe(data)}")
    readers = [Reader(raw, f"{base}[{index}]") for index, raw in enumerate(raw_entries)]
    groups: list[str] = []
    for entry in readers:
        group = _kobold_group(entry, folders)
        if group and group not in groups:
            groups.append(group)
    categories, category_ids = _categories(groups)
    entries = []
    for entry in readers:
        keys, regex_keys, case_sensitive = _keys(_comma_keys(entry, "key"), entry.at("key"), False)
        _comma_keys(entry, "keysecondary")
        _comma_keys(entry, "keyanti")
        made = LorebookEntry(
            id=new_entry_id(), name=entry.string("comment", "", limit=MAX_NAME_CHARS), text=entry.string("content"),
            keys=keys, regex_keys=regex_keys, case_sensitive=case_sensitive, always_on=entry.boolean("constant"),
            disabled=entry.boolean("widisabled"), cascading_activation=False,
            category=category_ids.get(_kobold_group(entry, folders), ""), context_config=lorebook_entry_config())
        rest = entry.rest(KOBOLD_FIELDS)
        if rest:
            made.extra["koboldai"] = rest
        entries.append(made)
    return Lorebook(name=name, entries=entries, categories=categories)


def _kobold_group(entry: Reader, folders: dict[str, str]) -> str:
    group = entry.string("wigroup", "", limit=MAX_NAME_CHARS).strip()
    if group:
        return group
    folder = entry.data.get("folder")
    if folder is None or isinstance(folder, bool):
        return ""
    if not isinstance(folder, int | str):
        raise ImportRefused(entry.at("folder"), f"must be a folder id or null, not {describe(folder)}")
    return folders.get(str(folder), str(folder))

"""The lorebook: a standalone `lorebooks` object that any number of stories use (a story lists
the ids of its lorebooks), shareable between stories. Field names are the text service's, so the
entries and categories are sent to the context builder exactly as decrypted.

    lorebooks/<id>   {"format": "fabula-lorebook", "version": 2, "name": "...", "description": "...",
                      "entries": [LorebookEntry...], "categories": [LorebookCategory...]}

An entry is activated when one of its `keys` occurs in the last `scan_depth_chars` characters of
the story (0 = all of it), or always with `always_on`; `disabled` switches it off. With
`cascading_activation` its keys are also searched in the text of the other activated entries.
A category groups entries: `enabled` false switches all of them off; `create_subcontext`
assembles them into one part first, placed with `subcontext_config`; `category_defaults` is the
template for the category's new entries (and, with `use_category_defaults`, the values its
entries leave unset).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from fabula_sdk.documents import codec
from fabula_sdk.documents.context import ContextConfig, lorebook_entry_config

FORMAT = "fabula-lorebook"
VERSION = 2


def new_entry_id() -> str:
    return uuid.uuid4().hex


@dataclass
class LorebookEntry:
    id: str = field(default_factory=new_entry_id)
    name: str = ""
    text: str = ""
    keys: list[str] = field(default_factory=list)
    regex_keys: bool = False  # the keys are regular expressions
    case_sensitive: bool = False
    scan_depth_chars: int = 0  # how far back from the story's end keys are searched; 0 = all
    always_on: bool = False
    disabled: bool = False
    key_relative: bool = False  # insertion_position counts from where the key matched
    cascading_activation: bool = False
    category: str = ""  # a category id; "" = none
    context_config: ContextConfig = field(default_factory=lorebook_entry_config)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class LorebookCategory:
    id: str = field(default_factory=new_entry_id)
    name: str = ""
    enabled: bool = True
    create_subcontext: bool = False
    subcontext_config: ContextConfig = field(default_factory=lorebook_entry_config)
    use_category_defaults: bool = False
    category_defaults: LorebookEntry = field(default_factory=lambda: LorebookEntry(id=""))
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def new_entry(self, **fields: Any) -> LorebookEntry:
        """A new entry of this category, starting from the category's defaults."""
        template = codec.encode(self.category_defaults)
        template.update(id=new_entry_id(), category=self.id)
        entry = codec.decode(LorebookEntry, template, "category_defaults")
        for name, value in fields.items():
            setattr(entry, name, value)
        return entry


@dataclass
class Lorebook:
    name: str = ""
    description: str = ""
    entries: list[LorebookEntry] = field(default_factory=list)
    categories: list[LorebookCategory] = field(default_factory=list)
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def entry(self, id: str) -> LorebookEntry:
        for entry in self.entries:
            if entry.id == id:
                return entry
        raise KeyError(f"lorebook has no entry {id!r}")

    def category(self, id: str) -> LorebookCategory:
        for category in self.categories:
            if category.id == id:
                return category
        raise KeyError(f"lorebook has no category {id!r}")

    def to_json(self) -> dict[str, Any]:
        return codec.write_document(self, FORMAT)

    @classmethod
    def from_json(cls, data: dict[str, Any], what: str = "lorebook") -> Lorebook:
        lorebook = codec.read_document(cls, data, FORMAT, VERSION, what)
        ids = [entry.id for entry in lorebook.entries]
        if len(set(ids)) != len(ids):
            raise codec.DocumentError(f"{what}.entries: entry ids must be unique")
        return lorebook

    def to_bytes(self) -> bytes:
        return codec.dumps(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "lorebook") -> Lorebook:
        return cls.from_json(codec.loads(data, what), what)

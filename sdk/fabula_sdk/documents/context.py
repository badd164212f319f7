"""How a piece of text (memory, author's note, the story, a lorebook entry, a category's
sub-context) is placed in the prompt: `ContextConfig`, NovelAI's contextConfig under the names
the text service's context builder and the gateway use, so a decrypted document is sent as it is.

The field defaults are neutral values for a field a writer left out; each part's own defaults
(NovelAI's) are the constructors `story_config()`, `memory_config()`, `authors_note_config()` and
`lorebook_entry_config()`, which the document classes use for a part that is absent altogether.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TrimDirection(enum.StrEnum):
    """Which end of the text is cut when it is over budget; NONE = all of it or nothing."""

    TOP = "top"
    BOTTOM = "bottom"
    NONE = "none"


class TextUnit(enum.StrEnum):
    """The unit trimming may cut at (`maximum_trim_type`) or insertion counts in (`insertion_type`)."""

    NEWLINE = "newline"
    SENTENCE = "sentence"
    TOKEN = "token"


@dataclass
class ContextConfig:
    prefix: str = ""
    suffix: str = ""
    token_budget: int = 0  # 0 = no limit
    reserved_tokens: int = 0
    budget_priority: int = 0  # higher is placed (and trimmed) first
    trim_direction: TrimDirection = TrimDirection.BOTTOM
    maximum_trim_type: TextUnit = TextUnit.SENTENCE
    insertion_type: TextUnit = TextUnit.NEWLINE
    # >= 0 counts units from the top of the context built so far, < 0 from the bottom (-1 = the end).
    insertion_position: int = -1
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


def story_config() -> ContextConfig:
    return ContextConfig(budget_priority=0, reserved_tokens=512, trim_direction=TrimDirection.TOP,
                         maximum_trim_type=TextUnit.SENTENCE, insertion_type=TextUnit.NEWLINE, insertion_position=-1)


def memory_config() -> ContextConfig:
    return ContextConfig(budget_priority=800, insertion_position=0, trim_direction=TrimDirection.BOTTOM)


def authors_note_config() -> ContextConfig:
    return ContextConfig(budget_priority=-400, insertion_position=-4, insertion_type=TextUnit.NEWLINE,
                         trim_direction=TrimDirection.BOTTOM)


def lorebook_entry_config() -> ContextConfig:
    return ContextConfig(budget_priority=400, insertion_position=-1, trim_direction=TrimDirection.BOTTOM,
                         maximum_trim_type=TextUnit.SENTENCE, insertion_type=TextUnit.NEWLINE)

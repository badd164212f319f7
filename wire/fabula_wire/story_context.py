"""The limits of a storytelling request's context (story, memory, author's note, lorebook), written
once: the text service checks a context against them (`services.text.story_context.check_inputs`)
and the gateway states them in its bodies and its OpenAPI document (`gateway.schemas.text`), so
the two cannot drift apart.

Limits that depend on the deployment (the story's length, the lorebook's key totals and search
time) are the text service's settings, not these.
"""

from __future__ import annotations

MAX_AUTHORS_NOTE_DEPTH = 10_000  # lines above the story's end
MAX_LOREBOOK_ENTRIES = 512
MAX_CATEGORIES = 128
MAX_KEYS_PER_ENTRY = 64
MAX_KEY_CHARS = 256  # each key, at least 1
MAX_PART_CHARS = 50_000  # memory, author's note, each lorebook entry's text
MAX_AFFIX_CHARS = 1_000  # each prefix and suffix
MAX_POSITION = 1_000_000  # |insertion_position|, |budget_priority|

"""What every importer checks before anything is built: sizes, counts, types and regular
expressions, each failure an `ImportRefused` naming the field by its JSON path
(`entries[3].keys[0]`). Importers validate the whole file first and build documents only from a
file that passed, so a refused file leaves nothing half-imported.

The limits are far above any real lorebook (NovelAI's own are a few thousand entries of a few
thousand characters) and low enough that a hostile file cannot make the client, the server's
context builder, or the account's storage do unbounded work.
"""

from __future__ import annotations

import json
from typing import Any

import regex

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_ENTRIES = 5_000
MAX_CATEGORIES = 500
MAX_KEYS_PER_ENTRY = 200
MAX_KEY_CHARS = 1_000
MAX_ENTRY_TEXT_CHARS = 100_000
MAX_STORY_TEXT_CHARS = 8_000_000
MAX_NAME_CHARS = 1_000
# Deeper nesting than any of the formats has is a hostile file (and would exhaust the parser's stack).
MAX_JSON_DEPTH = 32
# A regex key must answer on probe texts within this time, or the file is refused: the context
# builder searches every key in the story on every generation. Catastrophic backtracking shows on
# a long run of a character the pattern repeats, followed by a character that makes it fail.
REGEX_PROBE_SECONDS = 0.25
REGEX_PROBE_RUN = 2_000
REGEX_PROBE_CHARS = 16


class ImportRefused(ValueError):
    """A file that cannot be imported; the message names the field at fault."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def load_json(data: bytes, what: str) -> Any:
    if len(data) > MAX_FILE_BYTES:
        raise ImportRefused("", f"{what} is {len(data)} bytes; at most {MAX_FILE_BYTES} are imported")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImportRefused("", f"{what} is not UTF-8 ({error})") from None
    _check_depth(text, what)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ImportRefused("", f"{what} is not valid JSON ({error})") from None


def _check_depth(text: str, what: str) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH before parsing (brackets inside strings skipped)."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ImportRefused("", f"{what} nests objects and lists more than {MAX_JSON_DEPTH} deep")
        elif char in "]}":
            depth -= 1


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class Reader:
    """Typed access to one JSON object at `path`, each failure naming `path.field`."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ImportRefused(path or "(top level)", f"must be an object, not {describe(data)}")
        self.data = data
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def string(self, key: str, default: str = "", *, limit: int = MAX_ENTRY_TEXT_CHARS) -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ImportRefused(self.at(key), f"must be a string, not {describe(value)}")
        if len(value) > limit:
            raise ImportRefused(self.at(key), f"is {len(value)} characters long; at most {limit} are imported")
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ImportRefused(self.at(key), f"must be true or false, not {describe(value)}")
        return value

    def number(self, key: str, default: float | None = None, *, minimum: float | None = None,
               maximum: float | None = None) -> float | None:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value in (
                float("inf"), float("-inf")):
            raise ImportRefused(self.at(key), f"must be a number, not {describe(value)}")
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            raise ImportRefused(self.at(key), f"must be between {minimum} and {maximum}, not {value}")
        return value

    def integer(self, key: str, default: int | None = None, *, minimum: int = -2**31, maximum: int = 2**31 - 1,
                ) -> int | None:
        value = self.number(key, None, minimum=minimum, maximum=maximum)
        if value is None:
            return default
        if value != int(value):
            raise ImportRefused(self.at(key), f"must be a whole number, not {value}")
        return int(value)

    def strings(self, key: str, *, limit: int = MAX_KEYS_PER_ENTRY, chars: int = MAX_KEY_CHARS) -> list[str]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ImportRefused(self.at(key), f"must be a list of strings, not {describe(value)}")
        if len(value) > limit:
            raise ImportRefused(self.at(key), f"has {len(value)} items; at most {limit} are imported")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ImportRefused(f"{self.at(key)}[{index}]", f"must be a string, not {describe(item)}")
            if len(item) > chars:
                raise ImportRefused(f"{self.at(key)}[{index}]", f"is {len(item)} characters; at most {chars}")
        return list(value)

    def items(self, key: str, *, limit: int) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ImportRefused(self.at(key), f"must be a list, not {describe(value)}")
        if len(value) > limit:
            raise ImportRefused(self.at(key), f"has {len(value)} items; at most {limit} are imported")
        return value

    def child(self, key: str) -> Reader | None:
        value = self.data.get(key)
        return None if value is None else Reader(value, self.at(key))

    def rest(self, known: set[str]) -> dict[str, Any]:
        """The fields no mapping uses, kept with the imported document (nothing is silently lost)."""
        return {key: value for key, value in self.data.items() if key not in known}


def _probes(pattern: str) -> list[str]:
    """Runs of each word character the pattern names (and of a, 0 and "a "), each ending in NUL."""
    chars = ["a", "0"]
    for char in pattern:
        if char.isalnum() and char not in chars and len(chars) < REGEX_PROBE_CHARS:
            chars.append(char)
    return [char * REGEX_PROBE_RUN + "\x00" for char in chars] + ["a " * (REGEX_PROBE_RUN // 2) + "\x00"]


def check_regex(pattern: str, path: str, *, case_sensitive: bool) -> None:
    """Refuse a pattern that does not compile, or that takes longer than REGEX_PROBE_SECONDS on a
    probe text built to trigger catastrophic backtracking."""
    try:
        compiled = regex.compile(pattern, 0 if case_sensitive else regex.IGNORECASE)
    except (regex.error, OverflowError, RecursionError, ValueError) as error:
        raise ImportRefused(path, f"is not a valid regular expression ({error})") from None
    for probe in _probes(pattern):
        try:
            compiled.search(probe, timeout=REGEX_PROBE_SECONDS)
        except TimeoutError:
            raise ImportRefused(path, f"the regular expression {pattern[:60]!r} takes too long to search "
                                      f"(over {REGEX_PROBE_SECONDS} s on a short text); simplify it") from None

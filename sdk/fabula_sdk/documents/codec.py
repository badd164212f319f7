"""JSON (de)serialisation of the document dataclasses, with the format rules of docs/formats.md.

Every document class is a dataclass whose fields are its JSON keys, one to one. `decode` checks
each value against the field's type annotation and raises `DocumentError` naming the field's
path (`story.settings.sampling.top_k`); `encode` is its inverse. The supported annotations are
`str`, `int`, `float` (an integer is accepted), `bool`, `X | None`, `list[X]`, `dict[str, X]`,
`Any` (raw JSON), string enums and nested document classes.

A field declared with `metadata={"stored": False}` is in-memory state, never read or written.

The unknown-field rule: a key the class does not declare is kept, in the dataclass's `extra`
dict, and written back unchanged by `encode`, so a client that does not know a field (a newer
client's, a third party's) never deletes it. A field without a default is required; a missing
optional field takes its default.

`dumps` is the canonical serialisation (UTF-8, sorted keys, no whitespace, non-ASCII kept as is):
the same document always gives the same bytes, which the test vectors rely on.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")

EXTRA = "extra"


class DocumentError(ValueError):
    """A document (or one of its fields) is malformed; the message names the field's path."""


def dumps(value: Any) -> bytes:
    """Canonical UTF-8 JSON of a document class instance (or of already encoded JSON)."""
    data = encode(value) if dataclasses.is_dataclass(value) else value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def loads(data: bytes, what: str) -> dict[str, Any]:
    """The JSON object in `data`; DocumentError naming `what` if it is not UTF-8 JSON holding an object."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise DocumentError(f"{what}: not UTF-8 JSON ({error})") from None
    if not isinstance(value, dict):
        raise DocumentError(f"{what}: must be a JSON object, not {type(value).__name__}")
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return tuple(field for field in dataclasses.fields(cls)
                 if field.name != EXTRA and field.metadata.get("stored", True))


def encode(value: Any) -> Any:
    """JSON-ready data for a document class instance (nested classes, enums, lists, dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {field.name: encode(getattr(value, field.name)) for field in _fields(type(value))}
        extra = getattr(value, EXTRA, None)
        if extra:
            for key, item in extra.items():
                out.setdefault(key, item)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    return value


def decode(cls: type[T], data: Any, path: str) -> T:
    """An instance of document class `cls` from JSON `data`; DocumentError naming the field at fault."""
    if not isinstance(data, dict):
        raise DocumentError(f"{path}: must be a JSON object, not {_json_type(data)}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for field in _fields(cls):
        if field.name in data:
            values[field.name] = _value(hints[field.name], data[field.name], f"{path}.{field.name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise DocumentError(f"{path}.{field.name}: required field is missing")
    known = {field.name for field in _fields(cls)}
    extra = {key: item for key, item in data.items() if key not in known}
    if extra:
        if EXTRA not in {field.name for field in dataclasses.fields(cls)}:
            raise DocumentError(f"{path}: unknown fields {sorted(extra)}")
        values[EXTRA] = extra
    return cls(**values)


def _value(hint: Any, data: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if data is None and type(None) in options:
            return None
        real = [option for option in options if option is not type(None)]
        if len(real) == 1:
            return _value(real[0], data, path)
        raise DocumentError(f"{path}: unsupported annotation {hint}")  # a class definition error
    if origin is list:
        if not isinstance(data, list):
            raise DocumentError(f"{path}: must be a list, not {_json_type(data)}")
        (item,) = typing.get_args(hint)
        return [_value(item, value, f"{path}[{index}]") for index, value in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise DocumentError(f"{path}: must be an object, not {_json_type(data)}")
        _, item = typing.get_args(hint)
        return {key: _value(item, value, f"{path}.{key}") for key, value in data.items()}
    if dataclasses.is_dataclass(hint):
        return decode(hint, data, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(data)
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in hint)
            raise DocumentError(f"{path}: must be one of {allowed}, not {data!r}") from None
    if hint is bool:
        if not isinstance(data, bool):
            raise DocumentError(f"{path}: must be true or false, not {_json_type(data)}")
        return data
    if hint is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise DocumentError(f"{path}: must be an integer, not {_json_type(data)}")
        return data
    if hint is float:
        if isinstance(data, bool) or not isinstance(data, int | float) or not math.isfinite(data):
            raise DocumentError(f"{path}: must be a finite number, not {_json_type(data)}")
        return float(data)
    if hint is str:
        if not isinstance(data, str):
            raise DocumentError(f"{path}: must be a string, not {_json_type(data)}")
        return data
    raise DocumentError(f"{path}: unsupported annotation {hint}")


def _json_type(data: Any) -> str:
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "a boolean"
    if isinstance(data, int | float):
        return f"the number {data!r}"
    if isinstance(data, str):
        return "a string"
    if isinstance(data, list):
        return "a list"
    return "an object" if isinstance(data, dict) else type(data).__name__


def check_header(data: dict[str, Any], format: str, what: str) -> int:
    """The document's `version` after checking its `format` name (docs/formats.md, "Format rules")."""
    if data.get("format") != format:
        raise DocumentError(f'{what}.format: must be "{format}", not {data.get("format")!r}')
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DocumentError(f"{what}.version: must be a positive integer, not {version!r}")
    return version


class NewerFormatError(DocumentError):
    """The document was written in a newer format version than this SDK writes: it was read as
    far as this SDK understands it, and saving it is refused so that nothing newer is lost."""


def read_document(cls: type[T], data: dict[str, Any], format: str, current: int, what: str) -> T:
    """Decode a top-level document (with `format` and `version` keys). Version `current` and older
    versions that need no migration decode as they are; a newer version decodes by the same rules
    (the fields this SDK knows), and its `version` is kept so that `check_writable` refuses it."""
    version = check_header(data, format, what)
    body = {key: value for key, value in data.items() if key != "format"}
    document = decode(cls, body, what)
    if version > current:
        object.__setattr__(document, "version", version)
    return document


def write_document(document: Any, format: str) -> dict[str, Any]:
    """JSON of a top-level document, with its `format` name first."""
    return {"format": format, **encode(document)}


def check_writable(document: Any, current: int, what: str) -> None:
    version = getattr(document, "version", current)
    if version > current:
        raise NewerFormatError(f"{what} is format version {version}, newer than the version {current} this "
                               "SDK writes: it can be read but not saved (update the SDK)")

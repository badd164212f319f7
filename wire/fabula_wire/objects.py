"""The kinds of encrypted object, named as in HTTP paths and export archives.

The name ("stories", "storycontent", ...) is the enum's value: it appears in URLs, in archive
paths and manifests, and in the SDK's associated data, so it can never change. The number is the
`fabula.editor.v1.ObjectType` the editor's protobuf API and its database use.
"""

from __future__ import annotations

import enum

from fabula.editor.v1 import editor_pb2


class ObjectType(enum.StrEnum):
    STORY = "stories"
    STORY_CONTENT = "storycontent"
    LOREBOOK = "lorebooks"
    PRESET = "presets"
    IMAGE = "images"

    @property
    def proto(self) -> int:
        """The `fabula.editor.v1.ObjectType` number."""
        return _PROTO_NUMBERS[self]

    @classmethod
    def from_proto(cls, number: int) -> ObjectType:
        """The type whose protobuf number is `number`; ValueError naming the known ones otherwise."""
        try:
            return _BY_PROTO_NUMBER[number]
        except (KeyError, TypeError):
            known = ", ".join(f"{kind.proto} ({kind.name})" for kind in cls)
            raise ValueError(f"object type must be one of {known}, not {number!r}") from None

    @classmethod
    def parse(cls, name: str | ObjectType) -> ObjectType:
        """The type named `name` ("stories", ...); ValueError naming the known names otherwise."""
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(kind.value for kind in cls)
            raise ValueError(f"object type must be one of {known}, not {name!r}") from None


_PROTO_NUMBERS = {
    ObjectType.STORY: editor_pb2.OBJECT_TYPE_STORY,
    ObjectType.STORY_CONTENT: editor_pb2.OBJECT_TYPE_STORY_CONTENT,
    ObjectType.LOREBOOK: editor_pb2.OBJECT_TYPE_LOREBOOK,
    ObjectType.PRESET: editor_pb2.OBJECT_TYPE_PRESET,
    ObjectType.IMAGE: editor_pb2.OBJECT_TYPE_IMAGE,
}
_BY_PROTO_NUMBER = {number: kind for kind, number in _PROTO_NUMBERS.items()}

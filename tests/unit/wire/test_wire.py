"""fabula_wire: the object types agree with the protobuf enum, and failed calls map to the HTTP
statuses and error codes clients see."""

from __future__ import annotations

import grpc
import pytest

from fabula.editor.v1 import editor_pb2
from fabula_wire import ObjectType, error_code, http_status


def test_every_protobuf_object_type_has_one_named_type():
    numbers = {value.number for value in editor_pb2.ObjectType.DESCRIPTOR.values if value.number != 0}
    assert {kind.proto for kind in ObjectType} == numbers
    for kind in ObjectType:
        assert ObjectType.from_proto(kind.proto) is kind
        assert ObjectType.parse(kind.value) is kind
        assert editor_pb2.ObjectType.Name(kind.proto) == f"OBJECT_TYPE_{kind.name}"


def test_path_names_are_the_archive_and_url_names():
    assert [kind.value for kind in ObjectType] == ["stories", "storycontent", "lorebooks", "presets", "images"]


@pytest.mark.parametrize("number", [0, 6, -1, "1", None])
def test_unknown_numbers_are_refused_naming_the_known_ones(number):
    with pytest.raises(ValueError, match=r"1 \(STORY\), 2 \(STORY_CONTENT\)"):
        ObjectType.from_proto(number)


def test_unknown_names_are_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="stories, storycontent, lorebooks, presets, images, not 'story'"):
        ObjectType.parse("story")


@pytest.mark.parametrize("code, status, name", [
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "INVALID_ARGUMENT"),
    (grpc.StatusCode.UNAUTHENTICATED, 401, "UNAUTHENTICATED"),
    (grpc.StatusCode.NOT_FOUND, 404, "NOT_FOUND"),
    (grpc.StatusCode.ABORTED, 409, "ABORTED"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "RESOURCE_EXHAUSTED"),
    (grpc.StatusCode.CANCELLED, 499, "CANCELLED"),
    (grpc.StatusCode.UNAVAILABLE, 503, "UNAVAILABLE"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "DEADLINE_EXCEEDED"),
    # Server faults all read alike, so what went wrong inside does not leak.
    (grpc.StatusCode.INTERNAL, 500, "INTERNAL"),
    (grpc.StatusCode.UNKNOWN, 500, "INTERNAL"),
    (grpc.StatusCode.DATA_LOSS, 500, "INTERNAL"),
])
def test_grpc_codes_map_to_http_statuses_and_codes(code, status, name):
    assert (http_status(code), error_code(code)) == (status, name)

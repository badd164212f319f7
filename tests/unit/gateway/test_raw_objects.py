"""The lean raw-object path spells times exactly as the JSON routes' pydantic models do."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.raw_objects import iso_time
from gateway.schemas.editor import ObjectMeta
from fabula.editor.v1 import editor_pb2


@pytest.mark.parametrize("microseconds", [0, 1, 1_764_910_000_000_000, 1_764_910_000_123_456, 1_764_910_000_500_000,
                                          253_402_300_799_999_999])
def test_iso_time_is_the_json_routes_spelling(microseconds: int) -> None:
    stamp = Timestamp()
    stamp.FromMicroseconds(microseconds)
    meta = editor_pb2.ObjectMeta(id="a", type=1, created_at=stamp, updated_at=stamp)
    assert iso_time(stamp) == ObjectMeta.from_pb(meta).model_dump(mode="json")["created_at"]

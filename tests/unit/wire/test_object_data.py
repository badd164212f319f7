"""fabula_wire.object_data: what a peer's batch announcement means, and how ready messages are
put together into one within its limits."""

from __future__ import annotations

from collections import deque

import pytest

from fabula.editor.v1 import editor_pb2 as pb
from fabula_wire.object_data import (
    BATCH_ITEM_OVERHEAD,
    BATCH_MAX_BYTES,
    BATCH_MAX_ITEMS,
    BATCH_METADATA_KEY,
    announced_batch_bytes,
    take_batch,
)


def _put(request_id: int, size: int) -> pb.ObjectDataRequest:
    return pb.ObjectDataRequest(request_id=request_id, put_object=pb.PutObjectRequest(id=f"s{request_id}",
                                                                                    data=b"x" * size))


@pytest.mark.parametrize(("metadata", "expected"), [
    ((), 0),  # an older peer says nothing
    (None, 0),
    ((("other", "5"),), 0),
    (((BATCH_METADATA_KEY, "65536"),), 65536),
    (((BATCH_METADATA_KEY, str(64 * 1024 * 1024)),), BATCH_MAX_BYTES),  # capped at our own bound
    (((BATCH_METADATA_KEY, "-3"),), 0),
    (((BATCH_METADATA_KEY, "lots"),), 0),
    (((BATCH_METADATA_KEY, ""),), 0),
])
def test_the_announcement_gives_the_batch_limit(metadata, expected):
    assert announced_batch_bytes(metadata) == expected


def test_ready_messages_go_in_the_first_ones_batch_in_order():
    first, ready = _put(1, 10), deque(_put(i, 10) for i in range(2, 6))
    message = take_batch(first, ready, 10_000)
    assert message is first
    assert [m.request_id for m in message.batch] == [2, 3, 4, 5]
    assert not ready
    # What goes on the wire reads back as the five requests, each whole.
    read = pb.ObjectDataRequest.FromString(message.SerializeToString())
    assert [read.request_id, *(m.request_id for m in read.batch)] == [1, 2, 3, 4, 5]
    assert all(m.put_object.data == b"x" * 10 for m in read.batch)


def test_a_batch_stays_within_the_limit_and_the_rest_waits():
    ready = deque(_put(i, 1000) for i in range(2, 10))
    one = _put(1, 1000).ByteSize() + BATCH_ITEM_OVERHEAD
    limit = 3 * one + 10  # room for the first and two more
    message = take_batch(_put(1, 1000), ready, limit)
    assert [m.request_id for m in message.batch] == [2, 3]
    assert message.ByteSize() <= limit
    assert [m.request_id for m in ready] == [4, 5, 6, 7, 8, 9]


def test_a_message_larger_than_the_limit_goes_alone():
    ready = deque([_put(2, 10)])
    assert not take_batch(_put(1, 5000), ready, 1000).batch
    assert len(ready) == 1


def test_no_batch_to_a_peer_that_takes_none():
    ready = deque(_put(i, 10) for i in range(2, 5))
    assert not take_batch(_put(1, 10), ready, 0).batch
    assert len(ready) == 3


def test_a_batch_holds_at_most_the_item_bound():
    ready = deque(_put(i, 1) for i in range(2, BATCH_MAX_ITEMS + 10))
    message = take_batch(_put(1, 1), ready, BATCH_MAX_BYTES)
    assert len(message.batch) + 1 == BATCH_MAX_ITEMS
    assert ready[0].request_id == BATCH_MAX_ITEMS + 1


def test_an_end_marker_ends_the_batch_and_stays():
    end = object()
    ready = deque([pb.ObjectDataResponse(request_id=2), end, pb.ObjectDataResponse(request_id=3)])
    message = take_batch(pb.ObjectDataResponse(request_id=1), ready, 10_000)
    assert [m.request_id for m in message.batch] == [2]
    assert ready[0] is end and len(ready) == 2

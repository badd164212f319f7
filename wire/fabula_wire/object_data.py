"""The ObjectData stream's batches, as the gateway and the editor must both read them.

On `EditorService.ObjectData` (protos/fabula/editor/v1/editor.proto) requests or answers ready
together may travel in one message: the message's own, then those in its `batch` field. Each side
says, in the metadata it opens or accepts the stream with, that it takes such messages and how
large they may be; a side that said nothing (an older gateway or editor) gets one a message.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from google.protobuf.message import Message

# Sent by each side when it opens or accepts a stream: "this side takes batches, in messages of at
# most this many bytes".
BATCH_METADATA_KEY = "fabula-object-data-batch"
# A batch stays within this many bytes whatever the peer takes (about fifteen 64 KiB stories) and
# this many requests or answers: beyond, one message more costs little beside what it carries.
BATCH_MAX_BYTES = 1024 * 1024
BATCH_MAX_ITEMS = 64
# The bytes a message adds when it goes inside a batch (its field tag and length prefix), at most.
BATCH_ITEM_OVERHEAD = 6


def announced_batch_bytes(metadata: Any) -> int:
    """The largest batch the peer takes, from the metadata it sent (0: it takes none: an older
    peer, or a value that is not a positive number)."""
    for key, value in metadata or ():
        if key == BATCH_METADATA_KEY:
            try:
                return min(BATCH_MAX_BYTES, max(0, int(value)))
            except (TypeError, ValueError):
                return 0
    return 0


def take_batch(first: Message, ready: deque[Any], limit_bytes: int) -> Message:
    """`first`, with as many of the messages at the front of `ready` as fit in `limit_bytes`
    moved into its `batch` field (none when `limit_bytes` is 0: the peer takes no batches).
    Anything in `ready` that is not a message of first's type (a queue's end marker) ends the
    batch and stays."""
    if limit_bytes <= 0 or not ready:
        return first
    size = first.ByteSize()
    more: list[Message] = []
    while ready and len(more) < BATCH_MAX_ITEMS - 1 and type(ready[0]) is type(first):
        grown = size + ready[0].ByteSize() + BATCH_ITEM_OVERHEAD
        if grown > limit_bytes:
            break
        more.append(ready.popleft())
        size = grown
    if more:
        first.batch.extend(more)
    return first

"""Encrypted objects and the keystore: CRUD, paging, optimistic concurrency, quotas, isolation."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.editor.client import User, refused, register

STORY, IMAGE = pb.OBJECT_TYPE_STORY, pb.OBJECT_TYPE_IMAGE
ABORTED, NOT_FOUND = grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND


def put(stub, user: User, id: str, data: bytes, expected: int = 0, type: int = STORY):
    return stub.PutObject(pb.PutObjectRequest(type=type, id=id, data=data, expected_change_index=expected),
                          metadata=user.metadata)


def get(stub, user: User, id: str, type: int = STORY):
    return stub.GetObject(pb.GetObjectRequest(type=type, id=id), metadata=user.metadata)


async def test_create_read_update_delete(stub, alice: User):
    created = (await put(stub, alice, "story-1", b"ciphertext-1")).meta
    assert (created.id, created.type, created.size, created.change_index) == ("story-1", STORY, 12, 1)
    assert created.created_at == created.updated_at
    got = await get(stub, alice, "story-1")
    assert got.data == b"ciphertext-1" and got.meta == created
    updated = (await put(stub, alice, "story-1", b"ciphertext-two", expected=1)).meta
    assert (updated.change_index, updated.size, updated.created_at) == (2, 14, created.created_at)
    assert (await get(stub, alice, "story-1")).data == b"ciphertext-two"
    await stub.DeleteObject(pb.DeleteObjectRequest(type=STORY, id="story-1"), metadata=alice.metadata)
    await refused(get(stub, alice, "story-1"), NOT_FOUND)
    await refused(stub.DeleteObject(pb.DeleteObjectRequest(type=STORY, id="story-1"), metadata=alice.metadata),
                  NOT_FOUND)


async def test_types_are_separate_namespaces(stub, alice: User):
    await put(stub, alice, "same-id", b"story", type=STORY)
    await put(stub, alice, "same-id", b"image", type=IMAGE)
    assert (await get(stub, alice, "same-id", type=STORY)).data == b"story"
    assert (await get(stub, alice, "same-id", type=IMAGE)).data == b"image"


async def test_stale_change_index_never_overwrites(stub, alice: User):
    await put(stub, alice, "s", b"v1")
    await put(stub, alice, "s", b"v2", expected=1)
    await refused(put(stub, alice, "s", b"lost", expected=1), ABORTED, field="expected_change_index",
                  reason="STALE_CHANGE_INDEX")
    await refused(put(stub, alice, "s", b"lost", expected=0), ABORTED, reason="STALE_CHANGE_INDEX")
    await refused(put(stub, alice, "s", b"lost", expected=7), ABORTED, reason="STALE_CHANGE_INDEX")
    await refused(stub.DeleteObject(pb.DeleteObjectRequest(type=STORY, id="s", expected_change_index=1),
                                    metadata=alice.metadata), ABORTED, reason="STALE_CHANGE_INDEX")
    got = await get(stub, alice, "s")
    assert (got.data, got.meta.change_index) == (b"v2", 2)
    await refused(put(stub, alice, "absent", b"x", expected=3), NOT_FOUND)
    await stub.DeleteObject(pb.DeleteObjectRequest(type=STORY, id="s", expected_change_index=2), metadata=alice.metadata)
    await refused(get(stub, alice, "s"), NOT_FOUND)


async def test_concurrent_writers_on_one_index_exactly_one_wins(stub, alice: User):
    await put(stub, alice, "contended", b"base")
    writers = 12
    results = await asyncio.gather(*(put(stub, alice, "contended", f"writer-{n}".encode(), expected=1)
                                     for n in range(writers)), return_exceptions=True)
    winners = [n for n, result in enumerate(results) if not isinstance(result, BaseException)]
    losers = [result for result in results if isinstance(result, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == ABORTED for e in losers)
    got = await get(stub, alice, "contended")
    assert got.data == f"writer-{winners[0]}".encode() and got.meta.change_index == 2


async def test_concurrent_creates_exactly_one_wins(stub, alice: User):
    results = await asyncio.gather(*(put(stub, alice, "new", f"creator-{n}".encode()) for n in range(8)),
                                   return_exceptions=True)
    winners = [n for n, result in enumerate(results) if not isinstance(result, BaseException)]
    assert len(winners) == 1
    assert (await get(stub, alice, "new")).data == f"creator-{winners[0]}".encode()


async def test_reads_and_writes_check_the_session_first_and_every_time(stub, alice: User):
    await put(stub, alice, "s", b"secret")
    # No session: refused as unauthenticated before the type or id is looked at.
    await refused(stub.GetObject(pb.GetObjectRequest(type=STORY, id="no such id!")), grpc.StatusCode.UNAUTHENTICATED,
                  field="authorization")
    await refused(stub.GetObject(pb.GetObjectRequest(type=STORY, id="s")), grpc.StatusCode.UNAUTHENTICATED,
                  field="authorization")
    assert (await get(stub, alice, "s")).data == b"secret"
    await stub.Logout(pb.LogoutRequest(), metadata=alice.metadata)
    # A revoked session reads and writes nothing, at once.
    await refused(get(stub, alice, "s"), grpc.StatusCode.UNAUTHENTICATED, field="authorization")
    await refused(get(stub, alice, "absent"), grpc.StatusCode.UNAUTHENTICATED, field="authorization")
    await refused(put(stub, alice, "s", b"overwritten", expected=1), grpc.StatusCode.UNAUTHENTICATED,
                  field="authorization")
    await refused(put(stub, alice, "new", b"x"), grpc.StatusCode.UNAUTHENTICATED, field="authorization")
    again = await stub.Login(pb.LoginRequest(username="alice", auth_key=alice.auth_key))
    fresh = (("authorization", f"Bearer {again.session.token}"),)
    stored = await stub.GetObject(pb.GetObjectRequest(type=STORY, id="s"), metadata=fresh)
    assert (stored.data, stored.meta.change_index) == (b"secret", 1)
    await refused(stub.GetObject(pb.GetObjectRequest(type=STORY, id="new"), metadata=fresh), NOT_FOUND)


async def test_listing_pages_by_id(stub, alice: User):
    ids = sorted(f"id-{n:03d}" for n in range(25)) + ["A", "Z", "_x", "a-b"]
    for id in ids:
        await put(stub, alice, id, id.encode())
    await put(stub, alice, "an-image", b"img", type=IMAGE)
    seen, token, pages = [], "", 0
    while True:
        page = await stub.ListObjects(pb.ListObjectsRequest(type=STORY, page_size=7, page_token=token),
                                      metadata=alice.metadata)
        pages += 1
        assert len(page.objects) <= 7
        seen += [meta.id for meta in page.objects]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(ids) and pages == 5  # byte order on both back ends: "A" < "Z" < "_x" < "a-b" < "id-..."
    default = await stub.ListObjects(pb.ListObjectsRequest(type=STORY), metadata=alice.metadata)
    assert len(default.objects) == len(ids) and default.next_page_token == ""
    images = await stub.ListObjects(pb.ListObjectsRequest(type=IMAGE), metadata=alice.metadata)
    assert [meta.id for meta in images.objects] == ["an-image"]
    first = await stub.ListObjects(pb.ListObjectsRequest(type=STORY, page_size=2), metadata=alice.metadata)
    await refused(stub.ListObjects(pb.ListObjectsRequest(type=IMAGE, page_token=first.next_page_token),
                                   metadata=alice.metadata), grpc.StatusCode.INVALID_ARGUMENT, field="page_token")


async def test_users_never_see_each_others_objects(stub, alice: User, bob: User):
    await put(stub, alice, "secret", b"alice's story")
    await refused(get(stub, bob, "secret"), NOT_FOUND)
    listing = await stub.ListObjects(pb.ListObjectsRequest(type=STORY), metadata=bob.metadata)
    assert list(listing.objects) == []
    await refused(put(stub, bob, "secret", b"overwrite", expected=1), NOT_FOUND)
    await refused(stub.DeleteObject(pb.DeleteObjectRequest(type=STORY, id="secret"), metadata=bob.metadata), NOT_FOUND)
    # Bob may use the same id for his own object; it is a different object.
    await put(stub, bob, "secret", b"bob's story")
    assert (await get(stub, alice, "secret")).data == b"alice's story"
    assert (await get(stub, bob, "secret")).data == b"bob's story"
    keystore = await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=bob.metadata)
    await stub.PutKeystore(pb.PutKeystoreRequest(keystore=b"bob-2", expected_change_index=keystore.change_index),
                           metadata=bob.metadata)
    assert (await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=alice.metadata)).keystore == b"keystore-v1"


async def test_keystore_is_versioned(stub, alice: User):
    first = await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=alice.metadata)
    assert first.change_index == 1
    reply = await stub.PutKeystore(pb.PutKeystoreRequest(keystore=b"v2", expected_change_index=1),
                                   metadata=alice.metadata)
    assert reply.change_index == 2
    await refused(stub.PutKeystore(pb.PutKeystoreRequest(keystore=b"stale", expected_change_index=1),
                                   metadata=alice.metadata), ABORTED, reason="STALE_CHANGE_INDEX")
    current = await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=alice.metadata)
    assert (current.keystore, current.change_index) == (b"v2", 2)
    assert current.updated_at.ToMicroseconds() >= first.updated_at.ToMicroseconds()
    await refused(stub.PutKeystore(pb.PutKeystoreRequest(keystore=b"x" * (1024 * 1024 + 1), expected_change_index=2),
                                   metadata=alice.metadata), grpc.StatusCode.INVALID_ARGUMENT, field="keystore")


async def test_quotas(database_url):
    settings = fast_settings(database_url, max_objects_per_user=3, max_bytes_per_user=100, max_object_bytes=60)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        user = await register(stub, "quota")
        await refused(put(stub, user, "big", b"x" * 61), grpc.StatusCode.INVALID_ARGUMENT, field="data",
                      reason="TOO_LARGE")
        await put(stub, user, "a", b"x" * 50)
        await put(stub, user, "b", b"x" * 45)
        await refused(put(stub, user, "c", b"x" * 11), grpc.StatusCode.RESOURCE_EXHAUSTED, reason="STORAGE_QUOTA")
        await refused(put(stub, user, "a", b"x" * 60, expected=1), grpc.StatusCode.RESOURCE_EXHAUSTED,
                      reason="STORAGE_QUOTA")
        await put(stub, user, "a", b"x" * 10, expected=1)  # shrinking frees room
        await put(stub, user, "c", b"x" * 40)
        await refused(put(stub, user, "d", b"x"), grpc.StatusCode.RESOURCE_EXHAUSTED, reason="OBJECT_COUNT_QUOTA")
        await stub.DeleteObject(pb.DeleteObjectRequest(type=STORY, id="b"), metadata=user.metadata)
        await put(stub, user, "d", b"x" * 50)
        # Another user has their own quota.
        other = await register(stub, "other")
        await put(stub, other, "a", b"x" * 60)
        usage = await editor.storage.usage(user.user_id)
        assert (usage.objects, usage.stored_bytes) == (3, 100)


async def test_concurrent_creates_respect_the_count_quota(database_url):
    settings = fast_settings(database_url, max_objects_per_user=5)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        user = await register(stub, "racer")
        results = await asyncio.gather(*(put(stub, user, f"o{n}", os.urandom(8)) for n in range(15)),
                                       return_exceptions=True)
        assert sum(not isinstance(r, BaseException) for r in results) == 5
        listing = await stub.ListObjects(pb.ListObjectsRequest(type=STORY), metadata=user.metadata)
        assert len(listing.objects) == 5


@pytest.mark.parametrize("size", [1, 1024 * 1024 * 3 + 17])
async def test_binary_data_round_trips_exactly(stub, alice: User, size: int):
    data = os.urandom(size)
    meta = (await put(stub, alice, "bin", data)).meta
    assert meta.size == size
    assert (await get(stub, alice, "bin")).data == data

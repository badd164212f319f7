"""Bounded admission: a full Argon2id queue and full transfer slots or spool refuse at once
(RESOURCE_EXHAUSTED with a retry delay) instead of queueing without end."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from fabula_wire import read_error_detail
from services.editor.admission import BoundedQueue
from services.editor.embedded import embedded_editor, fast_settings
from services.toolkit.errors import ResourceExhausted
from tests.integration.editor.client import refused, register

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_bounded_queue_refuses_beyond_its_waiting_room():
    queue = BoundedQueue(running=1, waiting=1, what="test", reason="FULL")
    release = asyncio.Event()

    async def hold() -> None:
        async with queue.slot():
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert queue.waiting == 1
    with pytest.raises(ResourceExhausted) as raised:
        async with queue.slot():
            pass
    assert raised.value.reason == "FULL" and raised.value.retry_after_s > 0
    release.set()
    await asyncio.gather(holder, waiter)
    async with queue.slot():  # room again
        pass


async def test_logins_beyond_the_argon2_queue_are_refused_at_once(tmp_path):
    settings = fast_settings(f"sqlite:///{tmp_path / 'editor.db'}", max_concurrent_hashes=1, max_queued_hashes=0)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        user = await register(stub, "flooded")
        login = pb.LoginRequest(username=user.username, auth_key=user.auth_key)
        # The one hashing slot is taken (as by a login in progress) and no one may wait for it.
        async with editor.app.credentials.queue.slot():
            error = await refused(stub.Login(login), EXHAUSTED, reason="AUTH_HASH_QUEUE_FULL")
            assert read_error_detail(error)[1] > 0
        assert (await stub.Login(login)).session.token


async def test_logins_wait_in_the_argon2_queue_while_it_has_room(tmp_path):
    settings = fast_settings(f"sqlite:///{tmp_path / 'editor.db'}", max_concurrent_hashes=1, max_queued_hashes=4)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        user = await register(stub, "patient")
        login = pb.LoginRequest(username=user.username, auth_key=user.auth_key)
        async with editor.app.credentials.queue.slot():
            waiting = asyncio.ensure_future(stub.Login(login))
            while editor.app.credentials.queue.waiting == 0:
                await asyncio.sleep(0.01)
            assert not waiting.done()
        assert (await waiting).session.token


async def open_export(stub, user):
    """An export whose first piece was read. (It cannot hold its slot: the server pushes the whole
    archive into the transport's buffers and ends, whether or not the client reads on.)"""
    call = stub.ExportAccount(pb.ExportAccountRequest(), metadata=user.metadata)
    await call.read()
    return call


async def held_import(stub, user, editor, chunk: bytes = b"part of an archive"):
    """An import whose client sent its first piece and then keeps the stream open: it holds a
    transfer slot (and its piece's spool bytes) until it is cancelled, whatever the timing."""
    gate = editor.app.transfers.gate
    running = gate.running
    call = stub.ImportAccount(metadata=user.metadata)
    await call.write(pb.ImportAccountRequest(chunk=chunk, expected_keystore_change_index=1))
    async with asyncio.timeout(10):
        while gate.running == running:
            await asyncio.sleep(0.01)
    return call


async def test_transfers_are_capped_per_account_and_in_all(tmp_path):
    settings = fast_settings(f"sqlite:///{tmp_path / 'editor.db'}", max_concurrent_transfers=2,
                             max_transfers_per_user=1, export_chunk_bytes=1024)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        alice, bob, carol = [await register(stub, name) for name in ("alice", "bob", "carol")]
        for user in (alice, bob, carol):
            await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="s", data=os.urandom(20_000)),
                                 metadata=user.metadata)
        first = await held_import(stub, alice, editor)
        error = await refused(open_export(stub, alice), EXHAUSTED, reason="TRANSFERS_BUSY")
        assert read_error_detail(error)[1] > 0
        assert "this account already runs" in error.details()
        second = await held_import(stub, bob, editor)
        error = await refused(open_export(stub, carol), EXHAUSTED, reason="TRANSFERS_BUSY")
        assert "the editor already runs 2" in error.details()
        first.cancel()
        second.cancel()
        while editor.app.transfers.gate.running:
            await asyncio.sleep(0.01)
        assert b"".join([reply.chunk async for reply in stub.ExportAccount(pb.ExportAccountRequest(),
                                                                          metadata=carol.metadata)])


async def test_the_spool_budget_bounds_transfers_together(tmp_path):
    budget = 64 * 1024
    settings = fast_settings(f"sqlite:///{tmp_path / 'editor.db'}", transfer_spool_bytes=budget,
                             max_archive_bytes=budget, export_chunk_bytes=1024)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        alice, bob = await register(stub, "alice"), await register(stub, "bob")
        await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="s", data=os.urandom(40_000)),
                             metadata=bob.metadata)
        held = await held_import(stub, alice, editor, chunk=os.urandom(40_000))
        assert editor.app.transfers.gate.spooled_bytes == 40_000
        # Bob's archive (over 40,000 bytes) does not fit beside the 40,000 bytes Alice's import spooled.
        await refused(open_export(stub, bob), EXHAUSTED, reason="TRANSFER_SPOOL_FULL")
        held.cancel()
        while editor.app.transfers.gate.spooled_bytes:
            await asyncio.sleep(0.01)
        await open_export(stub, bob)

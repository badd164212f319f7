"""Deadlines are forwarded and a client that disconnects cancels the gRPC call it started.

The editor's calls answer in milliseconds, too fast to disconnect during one, so these tests put
a real gRPC server with deliberately slow handlers (on port 0, in-process) behind the gateway and
watch, from the server's side, whether and when each call is cancelled.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from services.toolkit.server import start_server
from tests.integration.gateway.harness import gateway_settings, serve_gateway

# Generous bounds that only stop a broken test from hanging; nothing here measures speed.
WAIT_S = 15.0
HEADERS = {"Authorization": "Bearer slow-token"}


class SlowEditor(editor_pb2_grpc.EditorServiceServicer):
    """Answers Authenticate at once; GetObject, ExportAccount and ImportAccount hang until cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.time_remaining: float | None = None

    async def Authenticate(self, request, context):
        return pb.AuthenticateResponse(user_id="user-1", username="slow")

    async def _hang(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def GetObject(self, request, context):
        self.time_remaining = context.time_remaining()
        await self._hang()

    async def ExportAccount(self, request, context):
        yield pb.ExportAccountResponse(chunk=b"\0" * 4096)
        await self._hang()

    async def ImportAccount(self, request_iterator, context):
        try:
            async for _ in request_iterator:
                self.started.set()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await self._hang()


@pytest.fixture
async def slow_stack():
    slow = SlowEditor()

    def register(server: grpc.aio.Server) -> list[str]:
        editor_pb2_grpc.add_EditorServiceServicer_to_server(slow, server)
        return ["fabula.editor.v1.EditorService"]

    running = await start_server(register)
    try:
        settings = gateway_settings(f"127.0.0.1:{running.port}", request_timeout_s=20.0)
        async with serve_gateway(settings) as live:
            async with httpx.AsyncClient(base_url=live.url, timeout=60.0) as client:
                yield slow, client, settings
    finally:
        await running.stop(0)


async def test_the_deadline_is_forwarded(slow_stack):
    slow, client, settings = slow_stack
    sent = time.monotonic()
    request = asyncio.create_task(client.get("/user/objects/stories/x", headers=HEADERS))
    await asyncio.wait_for(slow.started.wait(), WAIT_S)
    on_the_way = time.monotonic() - sent
    # None without a deadline. What is left of it is the gateway's deadline less the time the
    # request took to get there, however long that was on a loaded machine; gRPC's timeout header
    # rounds, so a second either way.
    assert slow.time_remaining is not None
    assert settings.request_timeout_s - on_the_way - 1 < slow.time_remaining < settings.request_timeout_s + 1
    request.cancel()
    await asyncio.wait_for(slow.cancelled.wait(), WAIT_S)


async def test_a_disconnect_cancels_a_unary_call(slow_stack):
    slow, client, _ = slow_stack
    request = asyncio.create_task(client.get("/user/objects/stories/x", headers=HEADERS))
    await asyncio.wait_for(slow.started.wait(), WAIT_S)
    assert not slow.cancelled.is_set()
    request.cancel()  # httpx drops the connection mid-request
    await asyncio.wait_for(slow.cancelled.wait(), WAIT_S)


async def test_a_disconnect_cancels_an_export(slow_stack):
    slow, client, _ = slow_stack
    async with client.stream("GET", "/user/export", headers=HEADERS) as reply:
        assert reply.status_code == 200
        async for piece in reply.aiter_raw():
            assert piece
            break
        await asyncio.wait_for(slow.started.wait(), WAIT_S)
    # Leaving the block closed the connection with the archive unfinished.
    await asyncio.wait_for(slow.cancelled.wait(), WAIT_S)


async def test_a_disconnect_cancels_an_import(slow_stack):
    slow, client, _ = slow_stack
    never = asyncio.Event()

    async def body_that_stalls():
        yield b"\0" * (2 * 1024 * 1024)  # over one message's worth, so the gateway forwards it
        await never.wait()

    request = asyncio.create_task(client.post("/user/import", content=body_that_stalls(),
                                              params={"expected_keystore_change_index": 1},
                                              headers={**HEADERS, "Content-Type": "application/x-tar"}))
    await asyncio.wait_for(slow.started.wait(), WAIT_S)
    request.cancel()
    await asyncio.wait_for(slow.cancelled.wait(), WAIT_S)


async def test_an_expired_deadline_is_504(slow_stack):
    slow, _, settings = slow_stack
    # A gateway of its own with a short deadline, in front of the same slow server.
    quick = gateway_settings(settings.editor_address, request_timeout_s=0.5)
    async with serve_gateway(quick) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=60.0) as client:
            reply = await client.get("/user/objects/stories/x", headers=HEADERS)
    assert reply.status_code == 504
    assert reply.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    await asyncio.wait_for(slow.cancelled.wait(), WAIT_S)

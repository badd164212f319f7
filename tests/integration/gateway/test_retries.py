"""The gateway tries a read or a token check once more when the service answers UNAVAILABLE, and
never repeats a write: against a stand-in editor (a real gRPC server on a free port) that fails
chosen methods with UNAVAILABLE a chosen number of times."""

from __future__ import annotations

import collections

import grpc
import httpx
import pytest

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from services.toolkit.server import start_server
from tests.integration.gateway.harness import b64, gateway_settings, serve_gateway

TOKEN = "t" * 43


class FlakyEditor(editor_pb2_grpc.EditorServiceServicer):
    """Answers GetSalt, Authenticate, GetObject and PutObject; the first `failures[method]`
    calls of a method end in UNAVAILABLE, as from a service that is going away."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = collections.Counter()
        self.calls: dict[str, int] = collections.Counter()

    async def _maybe_fail(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.calls[method] += 1
        if self.failures[method] > 0:
            self.failures[method] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")

    async def GetSalt(self, request, context):
        await self._maybe_fail("GetSalt", context)
        return pb.GetSaltResponse(salt=b"s" * 16, kdf=pb.KdfParams(opslimit=2, memlimit=64 * 1024 * 1024))

    async def Authenticate(self, request, context):
        await self._maybe_fail("Authenticate", context)
        return pb.AuthenticateResponse(user_id="u1", username="alice")

    async def GetObject(self, request, context):
        await self._maybe_fail("GetObject", context)
        return pb.GetObjectResponse(meta=pb.ObjectMeta(type=request.type, id=request.id, change_index=1), data=b"x")

    async def PutObject(self, request, context):
        await self._maybe_fail("PutObject", context)
        return pb.PutObjectResponse(meta=pb.ObjectMeta(type=request.type, id=request.id, change_index=1))


@pytest.fixture
async def flaky():
    editor = FlakyEditor()

    def register(server: grpc.aio.Server) -> list[str]:
        editor_pb2_grpc.add_EditorServiceServicer_to_server(editor, server)
        return ["fabula.editor.v1.EditorService"]

    running = await start_server(register)
    async with serve_gateway(gateway_settings(f"127.0.0.1:{running.port}", auth_cache_s=0)) as live, \
            httpx.AsyncClient(base_url=live.url, timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield editor, client
    await running.stop(0)


async def test_a_read_and_a_token_check_are_tried_once_more(flaky):
    editor, client = flaky
    editor.failures.update(GetSalt=1, Authenticate=1, GetObject=1)
    assert (await client.post("/user/salt", json={"username": "alice"})).status_code == 200
    assert editor.calls["GetSalt"] == 2
    assert (await client.get("/user/objects/stories/s1")).status_code == 200
    assert (editor.calls["Authenticate"], editor.calls["GetObject"]) == (2, 2)


async def test_only_once(flaky):
    editor, client = flaky
    editor.failures.update(GetSalt=2)
    reply = await client.post("/user/salt", json={"username": "alice"})
    assert reply.status_code == 503 and reply.headers["retry-after"]
    assert editor.calls["GetSalt"] == 2


async def test_a_write_is_never_repeated(flaky):
    editor, client = flaky
    editor.failures.update(PutObject=1)
    reply = await client.put("/user/objects/stories/s1", json={"data": b64(b"x"), "expected_change_index": 0})
    assert reply.status_code == 503 and reply.headers["retry-after"]
    assert editor.calls["PutObject"] == 1

"""Service-to-service trust through the real gateway and editor: the gateway signs every call it
makes, an editor that takes only the gateway refuses everyone else, and a signed call cannot be
used with another user's session."""

from __future__ import annotations

import base64

import grpc
import httpx
import pytest

from fabula.editor.v1 import editor_pb2, editor_pb2_grpc
from fabula_wire import read_error_detail
from services.editor.embedded import embedded_editor, fast_settings
from services.toolkit.callers import METADATA_KEY, TokenSigner, new_key_pair
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway


@pytest.fixture
def keys():
    return new_key_pair()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'editor.db'}"


def _bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


async def test_an_editor_that_takes_only_the_gateway(keys, sqlite_url):
    signing, public = keys
    settings = fast_settings(sqlite_url, caller_keys=public, accept_direct_clients=False)
    async with embedded_editor(settings) as editor, \
            serve_gateway(gateway_settings(editor.address, caller_signing_key=signing)) as gateway, \
            httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as client:
        # Through the gateway everything works: sign-up, sign-in checks, storage.
        alice = await register_user(client, "alice")
        body = {"data": base64.b64encode(b"sealed").decode(), "expected_change_index": 0}
        stored = await client.put("/user/objects/stories/s1", json=body, headers=alice.headers)
        assert stored.status_code in (200, 201), stored.text
        assert (await client.get("/user/me", headers=alice.headers)).status_code == 200

        async with grpc.aio.insecure_channel(editor.address) as channel:
            stub = editor_pb2_grpc.EditorServiceStub(channel)
            # Straight to the editor: not even with a valid session.
            for call in (stub.GetSalt(editor_pb2.GetSaltRequest(username="alice")),
                         stub.Authenticate(editor_pb2.AuthenticateRequest(), metadata=(_bearer(alice.token),))):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert read_error_detail(raised.value)[0].field == METADATA_KEY
            # A token meant for the text service is no token for the editor.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Authenticate(editor_pb2.AuthenticateRequest(), metadata=(
                    _bearer(alice.token), (METADATA_KEY, TokenSigner(signing).mint(alice.user_id, "text"))))
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # A signed call for one user with another user's session is refused.
            bob = await register_user(client, "bob")
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetKeystore(editor_pb2.GetKeystoreRequest(), metadata=(
                    _bearer(bob.token), (METADATA_KEY, TokenSigner(signing).mint(alice.user_id, "editor"))))
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # Also where the session check and the read share one trip to the database.
            stored = await client.put("/user/objects/stories/s1", json=body, headers=bob.headers)
            assert stored.status_code == 201, stored.text
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetObject(editor_pb2.GetObjectRequest(type=editor_pb2.OBJECT_TYPE_STORY, id="s1"), metadata=(
                    _bearer(bob.token), (METADATA_KEY, TokenSigner(signing).mint(alice.user_id, "editor"))))
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.PutObject(editor_pb2.PutObjectRequest(
                    type=editor_pb2.OBJECT_TYPE_STORY, id="s1", data=b"overwritten", expected_change_index=1),
                    metadata=(_bearer(bob.token), (METADATA_KEY, TokenSigner(signing).mint(alice.user_id, "editor"))))
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
            kept = await client.get("/user/objects/stories/s1/data", headers=bob.headers)
            assert (kept.content, kept.headers["x-fabula-change-index"]) == (b"sealed", "1")


async def test_a_gateway_signing_with_another_key_is_refused(keys, sqlite_url):
    _, public = keys
    settings = fast_settings(sqlite_url, caller_keys=public, accept_direct_clients=False)
    async with embedded_editor(settings) as editor, \
            serve_gateway(gateway_settings(editor.address, caller_signing_key=new_key_pair()[0])) as gateway, \
            httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as client:
        reply = await client.post("/user/salt", json={"username": "alice"})
        assert reply.status_code == 401, reply.text


async def test_direct_clients_sign_in_with_their_session_when_allowed(keys, sqlite_url):
    signing, public = keys
    settings = fast_settings(sqlite_url, caller_keys=public, accept_direct_clients=True)
    async with embedded_editor(settings) as editor, \
            serve_gateway(gateway_settings(editor.address, caller_signing_key=signing)) as gateway, \
            httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as client:
        alice = await register_user(client, "alice")
        async with grpc.aio.insecure_channel(editor.address) as channel:
            stub = editor_pb2_grpc.EditorServiceStub(channel)
            reply = await stub.Authenticate(editor_pb2.AuthenticateRequest(), metadata=(_bearer(alice.token),))
            assert reply.user_id == alice.user_id
            # Allowed without a token, but a token that is there must still be valid.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Authenticate(editor_pb2.AuthenticateRequest(), metadata=(
                    _bearer(alice.token), (METADATA_KEY, TokenSigner(new_key_pair()[0]).mint("", "editor"))))
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED

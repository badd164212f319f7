"""Personal API tokens: created, listed and revoked by a session; accepted by Authenticate with the
generation scope; refused by every call that touches the account or its stories; stored hashed.
Runs on SQLite and PostgreSQL (the database_url fixture)."""

from __future__ import annotations

import hashlib
import asyncio
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from fabula.editor.v1 import editor_pb2 as pb
from tests.integration.editor.client import refused


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _create(stub, user, name: str = "SillyTavern", expires_at: Timestamp | None = None):
    request = pb.CreateApiTokenRequest(name=name)
    if expires_at is not None:
        request.expires_at.CopyFrom(expires_at)
    return await stub.CreateApiToken(request, metadata=user.metadata)


async def test_created_token_authenticates_with_the_generation_scope(stub, alice):
    created = await _create(stub, alice)
    assert created.token.startswith("fabula_pat_") and created.info.name == "SillyTavern"
    assert not created.info.HasField("expires_at")
    reply = await stub.Authenticate(pb.AuthenticateRequest(), metadata=_bearer(created.token))
    assert (reply.user_id, reply.username, reply.scope) == (alice.user_id, "alice", pb.TOKEN_SCOPE_GENERATION)
    session = await stub.Authenticate(pb.AuthenticateRequest(), metadata=alice.metadata)
    assert session.scope == pb.TOKEN_SCOPE_SESSION


async def test_api_token_never_reaches_stories_or_the_account(stub, alice):
    await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="s1", data=b"ciphertext"),
                         metadata=alice.metadata)
    token = _bearer((await _create(stub, alice)).token)
    denied = grpc.StatusCode.PERMISSION_DENIED
    await refused(stub.GetObject(pb.GetObjectRequest(type=pb.OBJECT_TYPE_STORY, id="s1"), metadata=token),
                  denied, field="authorization")
    await refused(stub.ListObjects(pb.ListObjectsRequest(type=pb.OBJECT_TYPE_STORY), metadata=token), denied)
    await refused(stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="s2", data=b"x"),
                                 metadata=token), denied)
    await refused(stub.GetKeystore(pb.GetKeystoreRequest(), metadata=token), denied)
    await refused(stub.Logout(pb.LogoutRequest(), metadata=token), denied)
    # An API token cannot make, list or revoke tokens either (it could otherwise outlive its own revocation).
    await refused(stub.CreateApiToken(pb.CreateApiTokenRequest(name="more"), metadata=token), denied)
    await refused(stub.ListApiTokens(pb.ListApiTokensRequest(), metadata=token), denied)


async def test_list_and_revoke(stub, alice, bob):
    first = await _create(stub, alice, "one")
    second = await _create(stub, alice, "two")
    listed = await stub.ListApiTokens(pb.ListApiTokensRequest(), metadata=alice.metadata)
    assert [info.name for info in listed.tokens] == ["one", "two"]
    assert not (await stub.ListApiTokens(pb.ListApiTokensRequest(), metadata=bob.metadata)).tokens
    # Bob cannot revoke Alice's token, and learns nothing more than "not found".
    await refused(stub.RevokeApiToken(pb.RevokeApiTokenRequest(id=first.info.id), metadata=bob.metadata),
                  grpc.StatusCode.NOT_FOUND, field="id")
    await stub.RevokeApiToken(pb.RevokeApiTokenRequest(id=first.info.id), metadata=alice.metadata)
    await refused(stub.Authenticate(pb.AuthenticateRequest(), metadata=_bearer(first.token)),
                  grpc.StatusCode.UNAUTHENTICATED, field="authorization")
    assert (await stub.Authenticate(pb.AuthenticateRequest(), metadata=_bearer(second.token))).user_id == alice.user_id
    listed = await stub.ListApiTokens(pb.ListApiTokensRequest(), metadata=alice.metadata)
    assert [info.id for info in listed.tokens] == [second.info.id]


async def test_expiry(stub, alice):
    past, soon = Timestamp(), Timestamp()
    past.FromSeconds(int(time.time()) - 10)
    await refused(_create(stub, alice, expires_at=past), grpc.StatusCode.INVALID_ARGUMENT, field="expires_at")
    soon.FromMicroseconds(int(time.time() * 1_000_000) + 1_500_000)
    created = await _create(stub, alice, expires_at=soon)
    assert created.info.expires_at == soon
    await stub.Authenticate(pb.AuthenticateRequest(), metadata=_bearer(created.token))
    await asyncio.sleep(1.6)
    await refused(stub.Authenticate(pb.AuthenticateRequest(), metadata=_bearer(created.token)),
                  grpc.StatusCode.UNAUTHENTICATED)


async def test_names_are_checked(stub, alice):
    for name in ("", "   ", "x" * 65, "line\nbreak"):
        await refused(_create(stub, alice, name), grpc.StatusCode.INVALID_ARGUMENT, field="name")


async def test_unknown_and_forged_tokens_are_refused(stub, alice):
    for token in ("fabula_pat_forged", "fabula_pat_" + "A" * 600):
        await refused(stub.Authenticate(pb.AuthenticateRequest(), metadata=_bearer(token)),
                      grpc.StatusCode.UNAUTHENTICATED, field="authorization")


async def test_stored_only_as_sha256(stub, alice, editor):
    created = await _create(stub, alice)
    stored = await editor.app.storage.list_api_tokens(alice.user_id)
    assert [token.token_hash for token in stored] == [hashlib.sha256(created.token.encode()).digest()]


async def test_deleting_the_account_deletes_its_tokens(stub, alice, editor):
    created = await _create(stub, alice)
    await stub.DeleteAccount(pb.DeleteAccountRequest(auth_key=alice.auth_key), metadata=alice.metadata)
    await refused(stub.Authenticate(pb.AuthenticateRequest(), metadata=_bearer(created.token)),
                  grpc.StatusCode.UNAUTHENTICATED)
    assert await editor.app.storage.list_api_tokens(alice.user_id) == []


async def test_tokens_per_account_are_bounded(stub, alice, editor):
    limit = editor.app.settings.max_api_tokens_per_user
    for index in range(limit):
        await _create(stub, alice, f"t{index}")
    await refused(_create(stub, alice, "one too many"), grpc.StatusCode.RESOURCE_EXHAUSTED)

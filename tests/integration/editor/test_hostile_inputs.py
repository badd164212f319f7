"""Malformed requests are refused with INVALID_ARGUMENT naming the field, never INTERNAL."""

from __future__ import annotations

import os

import grpc
import pytest

from fabula.editor.v1 import editor_pb2 as pb
from tests.integration.editor.client import FAST_KDF, User, refused

INVALID = grpc.StatusCode.INVALID_ARGUMENT
GOOD_SALT, GOOD_KEY = b"s" * 16, b"k" * 32


def _register(**changes) -> pb.RegisterRequest:
    values = dict(username="newcomer", salt=GOOD_SALT, kdf=FAST_KDF, auth_key=GOOD_KEY, keystore=b"ks")
    values.update(changes)
    return pb.RegisterRequest(**values)


@pytest.mark.parametrize(("request_", "field"), [
    (_register(username=""), "username"),
    (_register(username="x" * 65), "username"),
    (_register(username="bad\nname"), "username"),
    (_register(username="tab\there"), "username"),
    (_register(username="zero\u200bwidth"), "username"),
    (_register(username=" padded"), "username"),
    (_register(username="trailing "), "username"),
    (_register(username="\U0010ffff"), "username"),
    (_register(salt=b""), "salt"),
    (_register(salt=b"s" * 15), "salt"),
    (_register(salt=b"s" * 17), "salt"),
    (_register(auth_key=b""), "auth_key"),
    (_register(auth_key=b"k" * 31), "auth_key"),
    (_register(auth_key=b"k" * 64), "auth_key"),
    (_register(kdf=pb.KdfParams()), "kdf.opslimit"),
    (_register(kdf=pb.KdfParams(opslimit=1, memlimit=8191)), "kdf.memlimit"),
    (_register(kdf=pb.KdfParams(opslimit=2**32 - 1, memlimit=8192)), "kdf.opslimit"),
    (_register(kdf=pb.KdfParams(opslimit=1, memlimit=2**64 - 1)), "kdf.memlimit"),
    (_register(keystore=b""), "keystore"),
], ids=lambda value: value if isinstance(value, str) else None)
async def test_register_refuses(stub, request_, field):
    await refused(stub.Register(request_), INVALID, field=field)


@pytest.mark.parametrize(("username", "field"), [("", "username"), ("a\x00b", "username"), ("é" * 65, "username")])
async def test_salt_and_login_refuse_bad_usernames(stub, username, field):
    await refused(stub.GetSalt(pb.GetSaltRequest(username=username)), INVALID, field=field)
    await refused(stub.Login(pb.LoginRequest(username=username, auth_key=GOOD_KEY)), INVALID, field=field)


async def test_login_refuses_bad_key_sizes(stub, alice: User):
    for key in (b"", b"k" * 31, b"k" * 33):
        await refused(stub.Login(pb.LoginRequest(username="alice", auth_key=key)), INVALID, field="auth_key")


async def test_unicode_usernames_are_accepted(stub):
    for name in ("Zoë", "名前", "emoji-🙂", "a b"):
        reply = await stub.Register(_register(username=name, salt=os.urandom(16)))
        assert reply.session.token


@pytest.mark.parametrize(("type_", "id_", "data", "field"), [
    (pb.OBJECT_TYPE_UNSPECIFIED, "ok", b"x", "type"),
    (99, "ok", b"x", "type"),
    (pb.OBJECT_TYPE_STORY, "", b"x", "id"),
    (pb.OBJECT_TYPE_STORY, "x" * 65, b"x", "id"),
    (pb.OBJECT_TYPE_STORY, "has space", b"x", "id"),
    (pb.OBJECT_TYPE_STORY, "../etc", b"x", "id"),
    (pb.OBJECT_TYPE_STORY, "ünïcode", b"x", "id"),
    (pb.OBJECT_TYPE_STORY, "dot.dot", b"x", "id"),
    (pb.OBJECT_TYPE_STORY, "ok", b"", "data"),
])
async def test_object_calls_refuse(stub, alice: User, type_, id_, data, field):
    await refused(stub.PutObject(pb.PutObjectRequest(type=type_, id=id_, data=data), metadata=alice.metadata),
                  INVALID, field=field)
    if field != "data":
        await refused(stub.GetObject(pb.GetObjectRequest(type=type_, id=id_), metadata=alice.metadata),
                      INVALID, field=field)
        await refused(stub.DeleteObject(pb.DeleteObjectRequest(type=type_, id=id_), metadata=alice.metadata),
                      INVALID, field=field)


async def test_object_larger_than_the_limit(stub, alice: User, editor):
    data = b"x" * (editor.settings.max_object_bytes + 1)
    await refused(stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="big", data=data),
                                 metadata=alice.metadata), INVALID, field="data", reason="TOO_LARGE")


@pytest.mark.parametrize(("page_size", "page_token", "field"), [
    (1001, "", "page_size"),
    (2**32 - 1, "", "page_size"),
    (10, "not-a-token", "page_token"),
    (10, "!!!", "page_token"),
    (10, "djE6MTpoYXMgc3BhY2U", "page_token"),  # "v1:1:has space"
    (10, "x" * 10_000, "page_token"),
])
async def test_listing_refuses(stub, alice: User, page_size, page_token, field):
    await refused(stub.ListObjects(pb.ListObjectsRequest(type=pb.OBJECT_TYPE_STORY, page_size=page_size,
                                                         page_token=page_token), metadata=alice.metadata),
                  INVALID, field=field)
    await refused(stub.ListObjects(pb.ListObjectsRequest(type=0), metadata=alice.metadata), INVALID, field="type")


async def test_change_password_refuses(stub, alice: User):
    base = dict(old_auth_key=alice.auth_key, new_salt=GOOD_SALT, new_kdf=FAST_KDF, new_auth_key=GOOD_KEY,
                keystore=b"k", expected_keystore_change_index=1)
    for changes, field in [({"old_auth_key": b"short"}, "old_auth_key"), ({"new_salt": b""}, "new_salt"),
                           ({"new_kdf": pb.KdfParams(opslimit=0, memlimit=8192)}, "new_kdf.opslimit"),
                           ({"new_auth_key": b"k" * 33}, "new_auth_key"), ({"keystore": b""}, "keystore")]:
        await refused(stub.ChangePassword(pb.ChangePasswordRequest(**{**base, **changes}), metadata=alice.metadata),
                      INVALID, field=field)
    await stub.Authenticate(pb.AuthenticateRequest(), metadata=alice.metadata)  # nothing changed


async def test_delete_account_refuses_a_malformed_key(stub, alice: User):
    await refused(stub.DeleteAccount(pb.DeleteAccountRequest(auth_key=b""), metadata=alice.metadata),
                  INVALID, field="auth_key")

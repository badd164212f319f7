"""Accounts and sessions through a real gRPC channel, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os

import grpc
import pytest

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.editor.client import FAST_KDF, User, refused, register

UNAUTH = grpc.StatusCode.UNAUTHENTICATED


async def test_register_login_authenticate(stub, alice: User):
    me = await stub.Authenticate(pb.AuthenticateRequest(), metadata=alice.metadata)
    assert (me.user_id, me.username) == (alice.user_id, "alice")
    login = await stub.Login(pb.LoginRequest(username="alice", auth_key=alice.auth_key))
    assert login.session.user_id == alice.user_id and login.session.token != alice.token
    assert len(login.session.token) >= 43  # 32 random bytes, URL-safe base64
    salt = await stub.GetSalt(pb.GetSaltRequest(username="alice"))
    assert salt.salt == alice.salt and salt.kdf == FAST_KDF
    keystore = await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=alice.metadata)
    assert keystore.keystore == b"keystore-v1" and keystore.change_index == 1


async def test_username_taken(stub, alice: User):
    await refused(register(stub, "alice"), grpc.StatusCode.ALREADY_EXISTS, field="username")


async def test_wrong_key_and_unknown_user_answer_alike(stub, alice: User):
    wrong = await refused(stub.Login(pb.LoginRequest(username="alice", auth_key=os.urandom(32))), UNAUTH)
    unknown = await refused(stub.Login(pb.LoginRequest(username="nobody", auth_key=os.urandom(32))), UNAUTH)
    assert wrong.details() == unknown.details()


async def test_decoy_salt_is_deterministic_and_shaped_like_a_real_one(stub, alice: User, editor):
    first = await stub.GetSalt(pb.GetSaltRequest(username="carol"))
    again = await stub.GetSalt(pb.GetSaltRequest(username="carol"))
    other = await stub.GetSalt(pb.GetSaltRequest(username="dave"))
    real = await stub.GetSalt(pb.GetSaltRequest(username="alice"))
    assert first == again
    assert first.salt != other.salt
    assert len(first.salt) == len(real.salt) == 16
    assert first.ListFields()[0][0].name == real.ListFields()[0][0].name  # same fields set
    settings = editor.settings
    assert (first.kdf.opslimit, first.kdf.memlimit) == (settings.default_kdf_opslimit, settings.default_kdf_memlimit)
    # Once carol registers, her own salt replaces the decoy.
    carol = await register(stub, "carol")
    assert (await stub.GetSalt(pb.GetSaltRequest(username="carol"))).salt == carol.salt != first.salt


async def test_decoy_depends_on_the_server_secret(tmp_path):
    salts = []
    for number, secret in enumerate(("first secret " * 3, "second secret " * 3)):
        settings = fast_settings(f"sqlite:///{tmp_path / f'{number}.db'}", server_secret=secret)
        async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
            reply = await editor_pb2_grpc.EditorServiceStub(channel).GetSalt(pb.GetSaltRequest(username="erin"))
            salts.append(reply.salt)
    assert salts[0] != salts[1]


async def test_username_is_normalised_to_nfc(stub):
    user = await register(stub, "Ame\u0301lie")  # decomposed é
    salt = await stub.GetSalt(pb.GetSaltRequest(username="Am\u00e9lie"))  # precomposed é
    assert salt.salt == user.salt
    await stub.Login(pb.LoginRequest(username="Am\u00e9lie", auth_key=user.auth_key))
    me = await stub.Authenticate(pb.AuthenticateRequest(), metadata=user.metadata)
    assert me.username == "Am\u00e9lie"
    await refused(register(stub, "Am\u00e9lie"), grpc.StatusCode.ALREADY_EXISTS, field="username")


async def test_logout_revokes_only_that_session(stub, alice: User):
    second = await stub.Login(pb.LoginRequest(username="alice", auth_key=alice.auth_key))
    await stub.Logout(pb.LogoutRequest(), metadata=alice.metadata)
    await refused(stub.Authenticate(pb.AuthenticateRequest(), metadata=alice.metadata), UNAUTH, field="authorization")
    other = (("authorization", f"Bearer {second.session.token}"),)
    assert (await stub.Authenticate(pb.AuthenticateRequest(), metadata=other)).user_id == alice.user_id


@pytest.mark.parametrize("metadata", [
    (),
    (("authorization", "Bearer "),),
    (("authorization", "Basic dXNlcjpwYXNz"),),
    (("authorization", "Bearer not-a-real-token"),),
    (("authorization", "Bearer " + "x" * 5000),),
])
async def test_calls_without_a_valid_token_are_refused(stub, metadata):
    await refused(stub.ListObjects(pb.ListObjectsRequest(type=pb.OBJECT_TYPE_STORY), metadata=metadata), UNAUTH)


async def test_sessions_expire(database_url):
    now = [1_700_000_000_000_000]
    settings = fast_settings(database_url, session_ttl_s=60)
    async with embedded_editor(settings, clock=lambda: now[0]) as editor, \
            grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        user = await register(stub, "frank")
        now[0] += 59_000_000
        await stub.Authenticate(pb.AuthenticateRequest(), metadata=user.metadata)
        now[0] += 1_000_000
        await refused(stub.Authenticate(pb.AuthenticateRequest(), metadata=user.metadata), UNAUTH)
        # Logging in again gives a fresh session.
        login = await stub.Login(pb.LoginRequest(username="frank", auth_key=user.auth_key))
        assert login.session.expires_at.ToMicroseconds() == now[0] + 60_000_000


async def _change_password(stub, user: User, expected_index: int, keystore: bytes = b"keystore-v2"):
    new_key, new_salt = os.urandom(32), os.urandom(16)
    reply = await stub.ChangePassword(pb.ChangePasswordRequest(
        old_auth_key=user.auth_key, new_salt=new_salt, new_kdf=pb.KdfParams(opslimit=2, memlimit=16384),
        new_auth_key=new_key, keystore=keystore, expected_keystore_change_index=expected_index),
        metadata=user.metadata)
    return reply, new_key, new_salt


async def test_change_password_replaces_everything_and_revokes_sessions(stub, alice: User):
    other = await stub.Login(pb.LoginRequest(username="alice", auth_key=alice.auth_key))
    reply, new_key, new_salt = await _change_password(stub, alice, expected_index=1)
    assert reply.keystore_change_index == 2
    for token in (alice.token, other.session.token):
        await refused(stub.Authenticate(pb.AuthenticateRequest(), metadata=(("authorization", f"Bearer {token}"),)),
                      UNAUTH)
    fresh = (("authorization", f"Bearer {reply.session.token}"),)
    assert (await stub.Authenticate(pb.AuthenticateRequest(), metadata=fresh)).user_id == alice.user_id
    salt = await stub.GetSalt(pb.GetSaltRequest(username="alice"))
    assert salt.salt == new_salt and (salt.kdf.opslimit, salt.kdf.memlimit) == (2, 16384)
    keystore = await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=fresh)
    assert (keystore.keystore, keystore.change_index) == (b"keystore-v2", 2)
    await refused(stub.Login(pb.LoginRequest(username="alice", auth_key=alice.auth_key)), UNAUTH)
    await stub.Login(pb.LoginRequest(username="alice", auth_key=new_key))


async def test_change_password_with_stale_keystore_changes_nothing(stub, alice: User):
    await stub.PutKeystore(pb.PutKeystoreRequest(keystore=b"keystore-v2", expected_change_index=1),
                           metadata=alice.metadata)
    await refused(_change_password(stub, alice, expected_index=1, keystore=b"stale"), grpc.StatusCode.ABORTED,
                  reason="STALE_CHANGE_INDEX")
    # The old key, salt, keystore and session all still stand.
    await stub.Authenticate(pb.AuthenticateRequest(), metadata=alice.metadata)
    assert (await stub.GetSalt(pb.GetSaltRequest(username="alice"))).salt == alice.salt
    keystore = await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=alice.metadata)
    assert (keystore.keystore, keystore.change_index) == (b"keystore-v2", 2)
    await stub.Login(pb.LoginRequest(username="alice", auth_key=alice.auth_key))


async def test_change_password_needs_the_old_key(stub, alice: User):
    await refused(stub.ChangePassword(pb.ChangePasswordRequest(
        old_auth_key=os.urandom(32), new_salt=os.urandom(16), new_kdf=FAST_KDF, new_auth_key=os.urandom(32),
        keystore=b"k", expected_keystore_change_index=1), metadata=alice.metadata), UNAUTH, field="old_auth_key")
    await stub.Login(pb.LoginRequest(username="alice", auth_key=alice.auth_key))


async def test_delete_account_removes_everything(stub, alice: User, bob: User):
    for number in range(3):
        await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id=f"s{number}", data=b"x"),
                             metadata=alice.metadata)
    await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="s0", data=b"bob's"), metadata=bob.metadata)
    second = await stub.Login(pb.LoginRequest(username="alice", auth_key=alice.auth_key))
    await refused(stub.DeleteAccount(pb.DeleteAccountRequest(auth_key=os.urandom(32)), metadata=alice.metadata),
                  UNAUTH, field="auth_key")
    reply = await stub.DeleteAccount(pb.DeleteAccountRequest(auth_key=alice.auth_key), metadata=alice.metadata)
    assert reply.deleted_objects == 3
    for token in (alice.token, second.session.token):
        await refused(stub.Authenticate(pb.AuthenticateRequest(), metadata=(("authorization", f"Bearer {token}"),)),
                      UNAUTH)
    await refused(stub.Login(pb.LoginRequest(username="alice", auth_key=alice.auth_key)), UNAUTH)
    # The name is free again, with nothing left behind; bob's objects are untouched.
    again = await register(stub, "alice")
    listing = await stub.ListObjects(pb.ListObjectsRequest(type=pb.OBJECT_TYPE_STORY), metadata=again.metadata)
    assert list(listing.objects) == []
    got = await stub.GetObject(pb.GetObjectRequest(type=pb.OBJECT_TYPE_STORY, id="s0"), metadata=bob.metadata)
    assert got.data == b"bob's"


async def test_kdf_below_the_servers_floor_is_refused(tmp_path):
    """The production floor (libsodium's INTERACTIVE cost): a client, or a server-side bug, can
    give no account a derivation cheaper than that, neither at registration nor at a password
    change; the floor itself is accepted."""
    settings = fast_settings(f"sqlite:///{tmp_path / 'floor.db'}", min_kdf_opslimit=2, min_kdf_memlimit=64 * 1024 * 1024,
                             default_kdf_opslimit=3, default_kdf_memlimit=256 * 1024 * 1024)
    floor = pb.KdfParams(opslimit=2, memlimit=64 * 1024 * 1024)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)

        def register_with(kdf: pb.KdfParams):
            return stub.Register(pb.RegisterRequest(username="erin", salt=os.urandom(16), kdf=kdf,
                                                    auth_key=os.urandom(32), keystore=b"k"))

        await refused(register_with(pb.KdfParams(opslimit=1, memlimit=64 * 1024 * 1024)), grpc.StatusCode.INVALID_ARGUMENT,
                      field="kdf.opslimit")
        await refused(register_with(pb.KdfParams(opslimit=2, memlimit=64 * 1024 * 1024 - 1024)),
                      grpc.StatusCode.INVALID_ARGUMENT, field="kdf.memlimit")
        erin = (await register_with(floor)).session
        metadata = (("authorization", f"Bearer {erin.token}"),)
        salt = await stub.GetSalt(pb.GetSaltRequest(username="erin"))
        assert salt.kdf == floor
        # Only the new cost is checked here; the old key is never reached.
        await refused(stub.ChangePassword(pb.ChangePasswordRequest(
            old_auth_key=os.urandom(32), new_salt=os.urandom(16), new_kdf=FAST_KDF, new_auth_key=os.urandom(32),
            keystore=b"k", expected_keystore_change_index=1), metadata=metadata),
            grpc.StatusCode.INVALID_ARGUMENT, field="new_kdf.opslimit")
        assert (await stub.GetSalt(pb.GetSaltRequest(username="erin"))).kdf == floor

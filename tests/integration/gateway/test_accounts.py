"""Accounts through HTTP: salt, registration, sessions, password change, deletion, keystore."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime

from tests.integration.gateway.harness import HttpUser, b64, register_user, registration


def _error(reply) -> dict:
    return reply.json()["error"]


async def test_register_answers_a_session_and_me_knows_the_user(client):
    body = registration("alice")
    reply = await client.post("/user/register", json=body)
    assert reply.status_code == 201
    session = reply.json()
    assert set(session) == {"token", "expires_at", "user_id"}
    assert datetime.fromisoformat(session["expires_at"]) > datetime.now(UTC)
    assert session["expires_at"].endswith("Z")
    me = await client.get("/user/me", headers={"Authorization": f"Bearer {session['token']}"})
    assert me.status_code == 200
    assert me.json() == {"user_id": session["user_id"], "username": "alice", "scope": "session"}


async def test_register_twice_is_a_conflict(client, alice: HttpUser):
    reply = await client.post("/user/register", json=registration("alice"))
    assert reply.status_code == 409
    assert _error(reply)["field"] == "username"


async def test_salt_is_the_registered_one_and_a_stable_decoy_otherwise(client):
    body = registration("carol")
    assert (await client.post("/user/register", json=body)).status_code == 201
    salt = await client.post("/user/salt", json={"username": "carol"})
    assert salt.status_code == 200
    assert salt.json() == {"salt": body["salt"], "kdf": body["kdf"]}

    first = await client.post("/user/salt", json={"username": "nobody-here"})
    second = await client.post("/user/salt", json={"username": "nobody-here"})
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert len(base64.b64decode(first.json()["salt"])) == 16


async def test_login_with_the_key_and_refusal_that_reveals_nothing(client, alice: HttpUser):
    reply = await client.post("/user/login", json={"username": "alice", "auth_key": b64(alice.auth_key)})
    assert reply.status_code == 200
    assert reply.json()["user_id"] == alice.user_id
    assert reply.json()["token"] != alice.token

    wrong_key = await client.post("/user/login", json={"username": "alice", "auth_key": b64(os.urandom(32))})
    unknown = await client.post("/user/login", json={"username": "nobody", "auth_key": b64(os.urandom(32))})
    assert wrong_key.status_code == unknown.status_code == 401
    assert _error(wrong_key)["message"] == _error(unknown)["message"]


async def test_logout_revokes_the_token_at_once(client, alice: HttpUser):
    assert (await client.get("/user/me", headers=alice.headers)).status_code == 200
    reply = await client.post("/user/logout", headers=alice.headers)
    assert reply.status_code == 204 and reply.content == b""
    after = await client.get("/user/me", headers=alice.headers)
    assert after.status_code == 401
    assert _error(after)["code"] == "UNAUTHENTICATED"
    listing = await client.get("/user/objects/stories", headers=alice.headers)
    assert listing.status_code == 401


async def test_unicode_username_round_trips(client):
    name = "Zoë 作家 🐉"
    user = await register_user(client, name)
    me = await client.get("/user/me", headers=user.headers)
    assert me.json()["username"] == name
    login = await client.post("/user/login", json={"username": name, "auth_key": b64(user.auth_key)})
    assert login.status_code == 200


async def test_keystore_read_and_optimistic_write(client, alice: HttpUser):
    first = await client.get("/user/keystore", headers=alice.headers)
    assert first.status_code == 200
    assert first.json()["change_index"] == 1
    assert first.json()["updated_at"].endswith("Z")

    new = os.urandom(200)
    put = await client.put("/user/keystore", headers=alice.headers,
                           json={"keystore": b64(new), "expected_change_index": 1})
    assert put.status_code == 200 and put.json() == {"change_index": 2}

    stale = await client.put("/user/keystore", headers=alice.headers,
                             json={"keystore": b64(os.urandom(200)), "expected_change_index": 1})
    assert stale.status_code == 409
    assert _error(stale)["field"] == "expected_change_index"
    after = await client.get("/user/keystore", headers=alice.headers)
    assert base64.b64decode(after.json()["keystore"]) == new  # the stale write changed nothing


async def test_change_password_revokes_sessions_and_switches_keys(client, alice: HttpUser):
    new_key, new_salt, keystore = os.urandom(32), os.urandom(16), os.urandom(150)
    body = {"old_auth_key": b64(alice.auth_key), "new_salt": b64(new_salt),
            "new_kdf": {"opslimit": 2, "memlimit": 16384}, "new_auth_key": b64(new_key),
            "keystore": b64(keystore), "expected_keystore_change_index": 1}

    stale = await client.post("/user/change-password", headers=alice.headers,
                              json={**body, "expected_keystore_change_index": 7})
    assert stale.status_code == 409

    reply = await client.post("/user/change-password", headers=alice.headers, json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert set(answer) == {"token", "expires_at", "user_id", "keystore_change_index"}
    assert answer["keystore_change_index"] == 2

    assert (await client.get("/user/me", headers=alice.headers)).status_code == 401
    new_headers = {"Authorization": f"Bearer {answer['token']}"}
    assert (await client.get("/user/me", headers=new_headers)).status_code == 200
    keystore_now = await client.get("/user/keystore", headers=new_headers)
    assert base64.b64decode(keystore_now.json()["keystore"]) == keystore

    old_login = await client.post("/user/login", json={"username": "alice", "auth_key": b64(alice.auth_key)})
    assert old_login.status_code == 401
    new_login = await client.post("/user/login", json={"username": "alice", "auth_key": b64(new_key)})
    assert new_login.status_code == 200
    salt = await client.post("/user/salt", json={"username": "alice"})
    assert salt.json() == {"salt": b64(new_salt), "kdf": {"opslimit": 2, "memlimit": 16384}}


async def test_delete_account_removes_everything(client, alice: HttpUser, bob: HttpUser):
    for index in range(3):
        put = await client.put(f"/user/objects/stories/s{index}", headers=alice.headers,
                               json={"data": b64(os.urandom(64)), "expected_change_index": 0})
        assert put.status_code == 201
    bob_put = await client.put("/user/objects/stories/s0", headers=bob.headers,
                               json={"data": b64(b"bob's"), "expected_change_index": 0})
    assert bob_put.status_code == 201

    wrong = await client.post("/user/delete", headers=alice.headers, json={"auth_key": b64(os.urandom(32))})
    assert wrong.status_code == 401
    reply = await client.post("/user/delete", headers=alice.headers, json={"auth_key": b64(alice.auth_key)})
    assert reply.status_code == 200 and reply.json() == {"deleted_objects": 3}

    assert (await client.get("/user/me", headers=alice.headers)).status_code == 401
    login = await client.post("/user/login", json={"username": "alice", "auth_key": b64(alice.auth_key)})
    assert login.status_code == 401
    # Bob's object with the same id is untouched.
    bobs = await client.get("/user/objects/stories/s0", headers=bob.headers)
    assert base64.b64decode(bobs.json()["data"]) == b"bob's"
    # The name is free again.
    assert (await client.post("/user/register", json=registration("alice"))).status_code == 201

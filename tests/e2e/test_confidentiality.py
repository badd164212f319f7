"""User → SDK → gateway → editor → SQLite/PostgreSQL and back: what comes back is what was
written, and what the server stores reveals nothing of it."""

from __future__ import annotations

import zlib

import nacl.utils
import pytest

from fabula_sdk import AuthenticationError, DecryptionError, InvalidRequestError, NotFoundError, ObjectType, Stories
from fabula_sdk.kdf import derive_keys
from tests.e2e.conftest import PASSWORD, in_thread

MARKER = "Zephyrine-the-lighthouse-keeper-7f3a"


async def test_round_trip_leaves_no_plaintext_in_the_database(connect, database):
    text = f"{MARKER} climbed the stairs every night. " * 40

    def scenario():
        client = connect()
        client.register("alice", PASSWORD)
        stories = Stories(client)
        story = stories.push(text, title=f"The tale of {MARKER}")
        lorebook = client.put(ObjectType.LOREBOOK, client.new_id(), f"lore of {MARKER}".encode(),
                              expected_change_index=0)
        image = nacl.utils.random(3000)
        client.put(ObjectType.IMAGE, "cover", image, expected_change_index=0, compress=False)
        client.put(ObjectType.PRESET, "warm", b'{"temperature": 0.7}', expected_change_index=0)

        # A fresh login (another device) reads everything back.
        other = connect()
        other.login("alice", PASSWORD)
        loaded = Stories(other).load(story.id)
        assert (loaded.text, loaded.title) == (text, f"The tale of {MARKER}")
        assert other.get(ObjectType.LOREBOOK, lorebook.id).plaintext == f"lore of {MARKER}".encode()
        assert other.get(ObjectType.IMAGE, "cover").plaintext == image
        assert [meta.id for meta in other.list(ObjectType.PRESET)] == ["warm"]
        assert [summary.title for summary in Stories(other).list()] == [f"The tale of {MARKER}"]

        salt = client.transport.get_salt("alice")
        keys = derive_keys(PASSWORD, salt.salt, salt.kdf)
        stored = [client.get(ObjectType.STORY_CONTENT, story.content_id).plaintext,
                  client.get(ObjectType.STORY, story.id).plaintext]
        data_keys = [entry.key for entry in client.keystore.entries.values()]
        return keys, client.master_key, data_keys, stored

    keys, master_key, data_keys, documents = await in_thread(scenario)
    stored = database.stored_bytes()
    if database.is_sqlite:
        assert any(path.name.endswith("-wal") for path in database.sqlite_files()), "the WAL should be searched too"
    forbidden = {"marker": MARKER.encode(), "marker (UTF-16)": MARKER.encode("utf-16-le"),
                 "password": PASSWORD.encode(), "auth key": keys.auth_key,
                 "key-encryption key": keys.key_encryption_key, "master key": master_key}
    for number, document in enumerate(documents):
        compressed = zlib.compress(document, 6)
        forbidden[f"document {number}"] = document
        forbidden[f"document {number} compressed"] = compressed
        forbidden[f"document {number} deflate body"] = compressed[2:-4]
    for number, key in enumerate(data_keys):
        forbidden[f"data key {number}"] = key
    for what, needle in forbidden.items():
        assert needle not in stored, f"the database holds the {what}"


async def test_another_users_token_gets_nothing(connect, database):
    def scenario():
        alice, bob = connect(), connect()
        alice.register("alice", PASSWORD)
        bob.register("bob", "bob's own password")
        alice.put(ObjectType.LOREBOOK, "shared-name", b"alice's lore", expected_change_index=0)
        # Bob's token only ever reaches Bob's objects: Alice's id is simply not there for him.
        with pytest.raises(NotFoundError):
            bob.transport.get_object(ObjectType.LOREBOOK, "shared-name")
        assert list(bob.list(ObjectType.LOREBOOK)) == []
        # Even if the server handed Bob Alice's ciphertext, his keys cannot open it.
        bob.put(ObjectType.LOREBOOK, "shared-name", b"bob's lore", expected_change_index=0)
        return alice, bob

    alice, bob = await in_thread(scenario)
    database.set_object_data(bob.user_id, ObjectType.LOREBOOK, "shared-name",
                             database.object_data(alice.user_id, ObjectType.LOREBOOK, "shared-name"))

    def afterwards():
        with pytest.raises(DecryptionError):
            bob.get(ObjectType.LOREBOOK, "shared-name")
        revoked = alice.transport.token
        alice.logout()
        alice.transport.token = revoked
        with pytest.raises(AuthenticationError) as refused:
            alice.transport.get_object(ObjectType.LOREBOOK, "shared-name")
        assert refused.value.status == 401
        bob.transport.token = "not-a-token"
        with pytest.raises(AuthenticationError):
            bob.transport.me()

    await in_thread(afterwards)


async def test_server_errors_name_the_field(connect):
    def scenario():
        client = connect()
        with pytest.raises(InvalidRequestError) as bad:
            client.register(" padded ", PASSWORD)
        assert (bad.value.status, bad.value.code, bad.value.field) == (400, "INVALID_ARGUMENT", "username")
        client.register("carol", PASSWORD)
        with pytest.raises(ValueError, match="object id"):
            client.put(ObjectType.STORY, "no spaces allowed", b"x", expected_change_index=0)
        with pytest.raises(NotFoundError) as missing:
            client.put(ObjectType.STORY, "absent", b"x", expected_change_index=3)
        assert missing.value.status == 404
        wrong = connect()
        with pytest.raises(AuthenticationError):
            wrong.login("carol", "not the password")

    await in_thread(scenario)

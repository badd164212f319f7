"""A server that changes what it stores: a flipped byte, ciphertexts swapped between objects, an
older version served again. The SDK refuses each with a DecryptionError and returns nothing. A
server that asks for a cheap password derivation is refused with a WeakKdfError."""

from __future__ import annotations

import pytest

from fabula_sdk import (
    KDF_FLOOR,
    MINIMUM_KDF,
    DecryptionError,
    FabulaClient,
    KeystoreError,
    ObjectType,
    ReplayError,
    Stories,
    WeakKdfError,
)
from tests.e2e.conftest import PASSWORD, in_thread


@pytest.fixture
async def alice(connect):
    def register():
        client = connect()
        client.register("alice", PASSWORD)
        return client

    return await in_thread(register)


async def test_tampered_ciphertext(alice, database):
    story = await in_thread(Stories(alice).push, "The original text.", title="Tamper")
    blob = bytearray(database.object_data(alice.user_id, ObjectType.STORY_CONTENT, story.content_id))
    blob[len(blob) // 2] ^= 0x04
    database.set_object_data(alice.user_id, ObjectType.STORY_CONTENT, story.content_id, bytes(blob))

    def read():
        with pytest.raises(DecryptionError, match="authentication failed"):
            Stories(alice).load(story.id)
        # The story's metadata was left alone and still reads.
        assert alice.get(ObjectType.STORY, story.id).plaintext

    await in_thread(read)


async def test_swapped_ciphertexts(alice, database):
    def write():
        stories = Stories(alice)
        return stories.push("First story.", title="One"), stories.push("Second story.", title="Two")

    one, two = await in_thread(write)
    user = alice.user_id
    first = database.object_data(user, ObjectType.STORY_CONTENT, one.content_id)
    second = database.object_data(user, ObjectType.STORY_CONTENT, two.content_id)
    database.set_object_data(user, ObjectType.STORY_CONTENT, one.content_id, second)
    database.set_object_data(user, ObjectType.STORY_CONTENT, two.content_id, first)
    # Across types too: a story's metadata served as another story's content.
    meta = database.object_data(user, ObjectType.STORY, one.id)

    def read():
        for story in (one, two):
            with pytest.raises(DecryptionError):
                Stories(alice).load(story.id)

    await in_thread(read)
    database.set_object_data(user, ObjectType.STORY_CONTENT, one.content_id, meta)
    with pytest.raises(DecryptionError):
        await in_thread(alice.get, ObjectType.STORY_CONTENT, one.content_id)


async def test_replayed_older_version(alice, database, connect):
    def write_twice():
        stories = Stories(alice)
        story = stories.push("Version one.", title="Replay")
        old = database.object_data(alice.user_id, ObjectType.STORY_CONTENT, story.content_id)
        story.text = "Version two."
        stories.save(story)
        # A second device sees version two as well.
        device = connect()
        device.login("alice", PASSWORD)
        assert Stories(device).load(story.id).text == "Version two."
        return story, old, device

    story, old, device = await in_thread(write_twice)
    database.set_object_data(alice.user_id, ObjectType.STORY_CONTENT, story.content_id, old)

    def read():
        for client in (alice, device):
            with pytest.raises(ReplayError, match="older than revision 2"):
                Stories(client).load(story.id)

    await in_thread(read)


async def test_tampered_keystore(alice, database, connect):
    await in_thread(Stories(alice).push, "Some text.")
    blob = bytearray(database.keystore(alice.user_id))
    blob[-3] ^= 0x10
    database.set_keystore(alice.user_id, bytes(blob))

    def login():
        with pytest.raises(KeystoreError):
            connect().login("alice", PASSWORD)

    await in_thread(login)


async def test_a_cost_below_the_floor_is_never_derived(alice, gateway):
    """alice's account has libsodium's minimum cost (this test server's floor is lowered to it),
    which is what a compromised server would answer to make her password cheap to guess. A client
    with the production floor refuses to derive from it, and refuses to give a cheap cost to a new
    account or password of its own."""

    def scenario():
        with FabulaClient.connect(gateway.url) as production:
            assert production.kdf_floor == KDF_FLOOR
            with pytest.raises(WeakKdfError, match="the server asked for an Argon2id cost of 1 passes"):
                production.login("alice", PASSWORD)
            assert production.session is None and production.transport.token is None
        with FabulaClient.connect(gateway.url, kdf=MINIMUM_KDF) as cheap:
            with pytest.raises(WeakKdfError, match="this client's kdf setting"):
                cheap.register("mallory", PASSWORD)
        # The floor lowered on purpose (tests only) lets the same login through.
        with FabulaClient.connect(gateway.url, kdf_floor_for_tests=MINIMUM_KDF) as lowered:
            lowered.login("alice", PASSWORD)

    await in_thread(scenario)

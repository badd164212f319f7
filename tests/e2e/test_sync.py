"""Two devices of one account: optimistic concurrency on objects and on the keystore, and a
password change that keeps every story readable."""

from __future__ import annotations

import pytest

from fabula_sdk import AuthenticationError, ConflictError, ObjectType, Stories
from tests.e2e.conftest import PASSWORD, in_thread

NEW_PASSWORD = "a brand new passphrase"


async def test_stale_change_index_never_overwrites(connect):
    def scenario():
        laptop, phone = connect(), connect()
        laptop.register("alice", PASSWORD)
        phone.login("alice", PASSWORD)
        story = Stories(laptop).push("Draft zero.", title="Shared")
        on_laptop, on_phone = Stories(laptop).load(story.id), Stories(phone).load(story.id)

        on_laptop.text = "The laptop's edit."
        Stories(laptop).save(on_laptop)
        on_phone.text = "The phone's edit, based on draft zero."
        with pytest.raises(ConflictError) as conflict:
            Stories(phone).save(on_phone)
        assert (conflict.value.status, conflict.value.field) == (409, "expected_change_index")
        assert Stories(phone).load(story.id).text == "The laptop's edit."

        # The phone reads the newer version, merges and saves: now it goes through.
        fresh = Stories(phone).load(story.id)
        fresh.text += " And the phone's."
        Stories(phone).save(fresh)
        assert Stories(laptop).load(story.id).text == "The laptop's edit. And the phone's."

        # Creating an id that exists is a conflict too, never an overwrite.
        with pytest.raises(ConflictError):
            laptop.put(ObjectType.STORY, story.id, b"clobber", expected_change_index=0)
        # So is deleting with a stale change index.
        with pytest.raises(ConflictError):
            phone.delete(ObjectType.STORY, story.id, expected_change_index=1)
        assert Stories(laptop).load(story.id).title == "Shared"

    await in_thread(scenario)


async def test_keystore_changes_from_two_devices_are_merged(connect):
    """Each device adds data keys with a keystore it read earlier; the second write meets a 409,
    merges and retries, so neither device's objects lose their keys."""

    def scenario():
        laptop, phone = connect(), connect()
        laptop.register("alice", PASSWORD)
        phone.login("alice", PASSWORD)
        for number in range(3):
            laptop.put(ObjectType.LOREBOOK, f"laptop-{number}", f"laptop {number}".encode(), expected_change_index=0)
            phone.put(ObjectType.LOREBOOK, f"phone-{number}", f"phone {number}".encode(), expected_change_index=0)
        third = connect()
        third.login("alice", PASSWORD)
        ids = sorted(meta.id for meta in third.list(ObjectType.LOREBOOK))
        assert ids == sorted([f"laptop-{n}" for n in range(3)] + [f"phone-{n}" for n in range(3)])
        for id in ids:
            assert third.get(ObjectType.LOREBOOK, id).plaintext == id.replace("-", " ").encode()

        # Deleting forgets the object's key everywhere.
        laptop.delete(ObjectType.LOREBOOK, "phone-0")
        third.sync_keystore()
        assert "phone-0" not in third.keystore.entries and "laptop-0" in third.keystore.entries

    await in_thread(scenario)


async def test_password_change_keeps_everything_readable(connect, database):
    def write():
        laptop, phone = connect(), connect()
        laptop.register("alice", PASSWORD)
        phone.login("alice", PASSWORD)
        stories = [Stories(laptop).push(f"Story number {n}.", title=f"Title {n}") for n in range(3)]
        laptop.put(ObjectType.IMAGE, "cover", b"\x89PNG fake image bytes", expected_change_index=0)
        return laptop, phone, stories

    laptop, phone, stories = await in_thread(write)
    before = {story.content_id: database.object_data(laptop.user_id, ObjectType.STORY_CONTENT, story.content_id)
              for story in stories}

    def change():
        old_token, phone_token = laptop.transport.token, phone.transport.token
        laptop.change_password(PASSWORD, NEW_PASSWORD)
        # Every earlier session is revoked, on every device.
        for token in (old_token, phone_token):
            laptop.transport.token, saved = token, laptop.transport.token
            with pytest.raises(AuthenticationError):
                laptop.transport.me()
            laptop.transport.token = saved
        with pytest.raises(AuthenticationError):
            connect().login("alice", PASSWORD)
        # The session the change returned works at once.
        assert [s.text for s in map(Stories(laptop).load, (s.id for s in stories))] == [
            f"Story number {n}." for n in range(3)]
        fresh = connect()
        fresh.login("alice", NEW_PASSWORD)
        for number, story in enumerate(stories):
            assert Stories(fresh).load(story.id).text == f"Story number {number}."
        assert fresh.get(ObjectType.IMAGE, "cover").plaintext == b"\x89PNG fake image bytes"
        # And a second change goes back and forth just as well.
        fresh.change_password(NEW_PASSWORD, PASSWORD)
        again = connect()
        again.login("alice", PASSWORD)
        assert Stories(again).load(stories[0].id).text == "Story number 0."

    await in_thread(change)
    # No story was re-encrypted: only the master key's wrapping changed.
    for content_id, blob in before.items():
        assert database.object_data(laptop.user_id, ObjectType.STORY_CONTENT, content_id) == blob


async def test_delete_account(connect, database):
    def scenario():
        client = connect()
        client.register("alice", PASSWORD)
        Stories(client).push("Soon gone.")
        client.put(ObjectType.PRESET, "p", b"{}", expected_change_index=0)
        with pytest.raises(AuthenticationError):
            client.delete_account("not the password")
        user_id = client.user_id
        assert client.delete_account(PASSWORD) == 3
        with pytest.raises(AuthenticationError):
            connect().login("alice", PASSWORD)
        # The username is free again, for a new account with new keys.
        connect().register("alice", NEW_PASSWORD)
        return user_id

    user_id = await in_thread(scenario)
    assert not [row for row in database.rows() if user_id in row]

"""Export from one server and import into another (the other storage back end): the archive's
keystore is merged client-side into the destination account's, the server stores the objects
unchanged, and everything reads back with the destination's own password."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from fabula_sdk import DecryptionError, FabulaClient, KeystoreError, MINIMUM_KDF, ObjectType, Stories
from services.editor.embedded import embedded_editor, fast_settings
from tests.conftest import fresh_postgres_schema
from tests.e2e.conftest import PASSWORD, in_thread
from tests.e2e.database import Database
from tests.integration.gateway.harness import gateway_settings, serve_gateway

BOB_PASSWORD = "bob has another password"


@pytest.fixture
async def other_server(database_url, tmp_path):
    """A second, independent editor and gateway on the other storage back end."""
    with contextlib.ExitStack() as stack:
        if database_url.startswith("sqlite"):
            url = stack.enter_context(fresh_postgres_schema())
        else:
            url = f"sqlite:///{tmp_path / 'other-server.db'}"
        async with embedded_editor(fast_settings(url)) as editor, \
                serve_gateway(gateway_settings(editor.address)) as gateway:
            yield gateway.url, Database(url)


def _rewrite_member(source: Path, target: Path, name: str, change) -> None:
    """Copy the archive with member `name` changed and the manifest's sha256 made to match, as an
    attacker who can edit the archive would."""
    with tarfile.open(source) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
    manifest = json.loads(members[0][1])
    with tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as out:
        changed = {member.name: data for member, data in members}
        changed[name] = change(changed[name])
        for entry in manifest["objects"]:
            if f"objects/{entry['type']}/{entry['id']}.bin" == name:
                entry["sha256"] = hashlib.sha256(changed[name]).hexdigest()
        changed["manifest.json"] = json.dumps(manifest).encode()
        for member, _ in members:
            member.size = len(changed[member.name])
            out.addfile(member, io.BytesIO(changed[member.name]))


async def test_export_then_import_into_another_server(connect, database, other_server, tmp_path):
    destination_url, destination_db = other_server
    archive = tmp_path / "alice.tar"

    def export():
        alice = connect()
        alice.register("alice", PASSWORD)
        stories = [Stories(alice).push(f"Alice's story {n}.", title=f"Alice {n}") for n in range(2)]
        alice.put(ObjectType.LOREBOOK, "lore", b"dragons live in the north", expected_change_index=0)
        alice.put(ObjectType.IMAGE, "portrait", bytes(range(256)) * 4, expected_change_index=0, compress=False)
        contents = alice.export_archive(archive)
        assert len(contents.objects) == 6 and contents.keystore is not None
        assert contents.username == "alice"
        return alice, stories

    alice, stories = await in_thread(export)

    def import_():
        bob = FabulaClient.connect(destination_url, kdf=MINIMUM_KDF, kdf_floor_for_tests=MINIMUM_KDF)
        bob.register("bob", BOB_PASSWORD)
        own = Stories(bob).push("Bob's own story.", title="Bob")
        with pytest.raises(KeystoreError):  # the archive opens only with the password it was made under
            bob.import_archive(archive, BOB_PASSWORD)
        assert [meta.id for meta in bob.list(ObjectType.STORY)] == [own.id]
        result = bob.import_archive(archive, PASSWORD)
        assert (result.imported_objects, result.keystore_replaced) == (6, False)
        bob.close()

        fresh = FabulaClient.connect(destination_url, kdf=MINIMUM_KDF, kdf_floor_for_tests=MINIMUM_KDF)
        fresh.login("bob", BOB_PASSWORD)
        for number, story in enumerate(stories):
            assert Stories(fresh).load(story.id).text == f"Alice's story {number}."
        assert Stories(fresh).load(own.id).text == "Bob's own story."
        assert fresh.get(ObjectType.LOREBOOK, "lore").plaintext == b"dragons live in the north"
        assert fresh.get(ObjectType.IMAGE, "portrait").plaintext == bytes(range(256)) * 4
        user_id = fresh.user_id
        fresh.close()
        return user_id

    bob_id = await in_thread(import_)
    # The destination stores exactly the bytes the source stored: nothing was re-encrypted.
    for story in stories:
        assert destination_db.object_data(bob_id, ObjectType.STORY_CONTENT, story.content_id) == \
            database.object_data(alice.user_id, ObjectType.STORY_CONTENT, story.content_id)


async def test_tampered_archive_is_refused_before_upload(connect, tmp_path):
    archive, tampered = tmp_path / "a.tar", tmp_path / "tampered.tar"

    def scenario():
        alice = connect()
        alice.register("alice", PASSWORD)
        story = Stories(alice).push("Original.", title="T")
        alice.export_archive(archive)
        _rewrite_member(archive, tampered, f"objects/storycontent/{story.content_id}.bin",
                        lambda data: data[:-1] + bytes([data[-1] ^ 1]))
        bob = connect()
        bob.register("bob", BOB_PASSWORD)
        with pytest.raises(DecryptionError):
            bob.import_archive(tampered, PASSWORD)
        assert list(bob.list(ObjectType.STORY_CONTENT)) == []

    await in_thread(scenario)


async def test_restoring_an_older_backup_into_the_same_account(connect, tmp_path):
    """Importing an older export brings the older versions back, as the user asked: the SDK does
    not mistake them for a replay."""
    archive = tmp_path / "backup.tar"

    def scenario():
        alice = connect()
        alice.register("alice", PASSWORD)
        story = Stories(alice).push("Before the backup.", title="Restore")
        alice.export_archive(archive)
        loaded = Stories(alice).load(story.id)
        loaded.text = "After the backup."
        Stories(alice).save(loaded)
        result = alice.import_archive(archive, PASSWORD)
        assert result.imported_objects == 2
        restored = Stories(alice).load(story.id)
        assert restored.text == "Before the backup."
        assert restored.content_change_index == 3  # the server counted the restore as a change
        # And work goes on from the restored version.
        restored.text = "Edited after the restore."
        Stories(alice).save(restored)
        assert Stories(alice).load(story.id).text == "Edited after the restore."

    await in_thread(scenario)

"""Story documents on the whole stack (SDK → gateway → editor): saves as history segments,
two devices writing the same story (the loser's edits become a branch, never lost), version-1
stories migrated, compaction, and what deleting a story takes with it."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

from fabula_sdk import ConflictError, NotFoundError, ObjectType, Stories
from fabula_sdk.documents import IllustrationBlock, ImageSettings, Lorebook, LorebookEntry, NodeKind, Preset, Sampling
from fabula_sdk.documents.store import DocumentStore, segment_id
from tests.e2e.conftest import PASSWORD, in_thread


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + b"\x10\x20\x30" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def devices(connect):
    """Two signed-in devices of one account."""
    def sign_in():
        laptop, phone = connect(), connect()
        laptop.register("alice", PASSWORD)
        phone.login("alice", PASSWORD)
        return laptop, phone

    return sign_in


def _ids(client, type: ObjectType) -> set[str]:
    return {meta.id for meta in client.list(type)}


async def test_a_save_after_a_generation_is_one_segment_and_the_story(devices):
    def scenario():
        laptop, phone = devices()
        store = laptop.documents
        doc = store.create_story(title="The Lighthouse", text="The keeper climbed the stairs.")
        doc.history.generate(" Below, the sea was black.")
        store.save(doc)
        assert _ids(laptop, ObjectType.STORY_CONTENT) == {doc.content_id, segment_id(doc.content_id, 0)}
        # The segment's key is derived, so the keystore gained only the story's and content's keys.
        assert segment_id(doc.content_id, 0) not in laptop.keystore.entries
        opened = DocumentStore(phone).open(doc.id)
        assert opened.text == "The keeper climbed the stairs. Below, the sea was black."
        assert opened.story.title == "The Lighthouse" and opened.story.history_segments == 1
        assert opened.story.preview.startswith("The keeper climbed")
        assert [node.kind for node in opened.history.nodes] == [NodeKind.ROOT, NodeKind.GENERATION]

    await in_thread(scenario)


async def test_two_devices_generating_at_once_the_loser_becomes_a_branch(devices):
    def scenario():
        laptop, phone = devices()
        on_laptop = DocumentStore(laptop).create_story(title="Shared", text="Once.")
        on_phone = DocumentStore(phone).open(on_laptop.id)
        laptop_node = on_laptop.history.generate(" The laptop's continuation.")
        phone_node = on_phone.history.generate(" The phone's continuation.")
        on_phone.story.tags = ["from-phone"]
        DocumentStore(laptop).save(on_laptop)
        DocumentStore(phone).save(on_phone)  # meets the laptop's segment 0: reloads and branches

        merged = DocumentStore(laptop).open(on_laptop.id)
        assert merged.text == "Once. The phone's continuation."  # the device that saved last is at its head
        laptop_text = merged.history.text_at(laptop_node.id)
        assert laptop_text == "Once. The laptop's continuation."
        phone_id = merged.history.head
        assert merged.history.node(phone_id).parent == merged.history.node(laptop_node.id).parent == 0
        assert sorted(merged.history.leaves()) == sorted([laptop_node.id, phone_id])
        assert phone_node.id == laptop_node.id  # both devices numbered their node 1; the phone's moved
        assert merged.story.tags == ["from-phone"] and merged.story.history_segments == 2
        # Either branch can be restored, and the restore is saved like any change.
        merged.history.checkout(laptop_node.id)
        DocumentStore(laptop).save(merged)
        assert DocumentStore(phone).open(on_laptop.id).text == laptop_text

    await in_thread(scenario)


async def test_a_metadata_change_and_a_generation_from_two_devices_both_stay(devices):
    def scenario():
        laptop, phone = devices()
        on_laptop = DocumentStore(laptop).create_story(title="Draft", text="Start.")
        on_phone = DocumentStore(phone).open(on_laptop.id)
        on_laptop.story.title = "Final title"
        on_laptop.story.memory.text = "Set in winter."
        DocumentStore(laptop).save(on_laptop)
        on_phone.history.generate(" More.")
        on_phone.story.favorite = True
        DocumentStore(phone).save(on_phone)  # its segment goes in; the story write meets the laptop's
        result = DocumentStore(laptop).open(on_laptop.id)
        assert (result.story.title, result.story.memory.text, result.story.favorite) == (
            "Final title", "Set in winter.", True)
        assert result.text == "Start. More." and len(result.history) == 2

    await in_thread(scenario)


async def test_with_on_conflict_raise_a_stale_save_writes_nothing(devices):
    def scenario():
        laptop, phone = devices()
        on_laptop = DocumentStore(laptop).create_story(text="Start.")
        on_phone = DocumentStore(phone).open(on_laptop.id)
        on_laptop.history.generate(" Laptop.")
        DocumentStore(laptop).save(on_laptop)
        on_phone.history.generate(" Phone.")
        with pytest.raises(ConflictError):
            DocumentStore(phone).save(on_phone, on_conflict="raise")
        assert DocumentStore(laptop).open(on_laptop.id).text == "Start. Laptop."

    await in_thread(scenario)


async def test_a_segment_written_but_never_committed_is_adopted(devices):
    """A device stopped between writing its segment and the story: the next save commits the
    stopped device's nodes together with its own."""
    def scenario():
        laptop, phone = devices()
        doc = DocumentStore(laptop).create_story(text="Start.")
        stopped = DocumentStore(phone).open(doc.id)
        lost_node = stopped.history.generate(" Written on the phone, then the battery died.")
        segment = stopped.history.segment(doc.content_id, 0)
        phone.put(ObjectType.STORY_CONTENT, segment_id(doc.content_id, 0), segment.to_bytes(), expected_change_index=0)

        doc.history.generate(" The laptop goes on.")
        DocumentStore(laptop).save(doc)
        reopened = DocumentStore(phone).open(doc.id)
        assert reopened.history.text_at(lost_node.id) == "Start. Written on the phone, then the battery died."
        assert reopened.text == "Start. The laptop goes on."
        assert reopened.story.history_segments == 2

    await in_thread(scenario)


async def test_compaction_folds_segments_and_keeps_every_node(devices):
    def scenario():
        laptop, phone = devices()
        store = DocumentStore(laptop, compact_after=3)
        doc = store.create_story(text="Start.")
        for round in range(7):
            doc.history.generate(f" Gen {round}.")
            if round % 2:
                doc.history.retry(f" Retry {round}.")
            store.save(doc)
        assert doc.segments_folded == 6 and doc.story.history_segments == 7
        segments = {id for id in _ids(laptop, ObjectType.STORY_CONTENT) if id.startswith(doc.content_id + "_h")}
        assert segments == {segment_id(doc.content_id, 6)}
        reopened = DocumentStore(phone).open(doc.id)
        assert [node.to_json() for node in reopened.history.nodes] == [node.to_json() for node in doc.history.nodes]
        assert reopened.text == doc.text
        reopened.history.verify()

    await in_thread(scenario)


async def test_version_1_stories_are_read_and_migrated_on_first_save(devices):
    def scenario():
        laptop, phone = devices()
        laptop.put(ObjectType.STORY_CONTENT, "old-content", json.dumps({"version": 1, "text": "An old tale."}).encode(),
                   expected_change_index=0)
        laptop.put(ObjectType.STORY, "old-story", json.dumps({"version": 1, "title": "Old", "content_id": "old-content",
                                                              "updated_at": "2026-01-02T03:04:05Z"}).encode(),
                   expected_change_index=0)
        doc = DocumentStore(phone).open("old-story")
        assert (doc.text, doc.story.title, doc.needs_migration) == ("An old tale.", "Old", True)
        doc.history.generate(" And it goes on.")
        DocumentStore(phone).save(doc)
        stored_story = json.loads(laptop.get(ObjectType.STORY, "old-story").plaintext)
        stored_content = json.loads(laptop.get(ObjectType.STORY_CONTENT, "old-content").plaintext)
        assert (stored_story["format"], stored_story["version"]) == ("fabula-story", 2)
        assert (stored_content["format"], stored_content["version"]) == ("fabula-story-content", 2)
        assert stored_story["created_at"] == "2026-01-02T03:04:05Z"
        assert DocumentStore(laptop).open("old-story").text == "An old tale. And it goes on."
        assert Stories(laptop).load("old-story").text == "An old tale. And it goes on."

    await in_thread(scenario)


async def test_deleting_a_story_takes_its_objects_but_not_a_shared_lorebook(devices):
    def scenario():
        laptop, phone = devices()
        store = DocumentStore(laptop)
        shared = store.create_lorebook(Lorebook(name="World", entries=[LorebookEntry(name="Sea", keys=["sea"])]))
        own = store.create_lorebook(Lorebook(name="Only this story"))
        doc = store.create_story(text="Start.", lorebook_ids=[shared.id, own.id])
        store.create_story(text="Another.", lorebook_ids=[shared.id])
        image = store.store_image(_png(8, 8), thumbnail=_png(2, 2))
        doc.history.illustrate(IllustrationBlock(image_id=image, caption="The sea", settings=ImageSettings(seed=7)))
        store.save(doc)
        doc.history.undo()  # the illustration is only on a branch now: still the story's
        doc.history.generate(" More.")
        store.save(doc)
        assert DocumentStore(phone).open_thumbnail(image).size == (2, 2)

        DocumentStore(phone).delete_story(doc.id)
        assert doc.id not in _ids(laptop, ObjectType.STORY)
        assert not any(id.startswith(doc.content_id) for id in _ids(laptop, ObjectType.STORY_CONTENT))
        assert _ids(laptop, ObjectType.IMAGE) == set()
        assert _ids(laptop, ObjectType.LOREBOOK) == {shared.id}
        laptop.sync_keystore()
        assert not {doc.id, doc.content_id, image, own.id} & set(laptop.keystore.entries)
        with pytest.raises(NotFoundError):
            DocumentStore(laptop).open(doc.id)
        with pytest.raises(ValueError, match="used by 1 stories"):
            store.delete_lorebook(shared.id)

    await in_thread(scenario)


async def test_lorebooks_and_presets_round_trip_and_refuse_stale_saves(devices):
    def scenario():
        laptop, phone = devices()
        store = DocumentStore(laptop)
        preset = store.create_preset(Preset(name="Calm", sampling=Sampling(temperature=0.6)))
        lorebook = store.create_lorebook(Lorebook(name="World"))
        on_phone = DocumentStore(phone).open_lorebook(lorebook.id)
        lorebook.document.entries.append(LorebookEntry(name="Castle", keys=["castle"]))
        store.save_lorebook(lorebook)
        on_phone.document.name = "Stale"
        with pytest.raises(ConflictError):
            DocumentStore(phone).save_lorebook(on_phone)
        assert DocumentStore(phone).open_lorebook(lorebook.id).document.entries[0].name == "Castle"
        assert DocumentStore(phone).open_preset(preset.id).document.sampling.temperature == 0.6
        assert [entry.id for entry in DocumentStore(phone).list_presets()] == [preset.id]

    await in_thread(scenario)


async def test_two_devices_saving_in_parallel_lose_nothing(devices):
    """Both devices generate and save in a loop at the same time; every node either made ends up
    in the tree, whatever the interleaving."""
    import threading

    def scenario():
        laptop, phone = devices()
        doc = DocumentStore(laptop).create_story(text="Start.")
        start = threading.Barrier(2)
        made: dict[str, list[str]] = {"laptop": [], "phone": []}

        def write(name, client):
            store = DocumentStore(client, compact_after=4)
            mine = store.open(doc.id)
            start.wait()
            for round in range(6):
                text = f" {name} {round}."
                mine.history.generate(text)
                store.save(mine)
                made[name].append(text)

        threads = [threading.Thread(target=write, args=(name, client)) for name, client in
                   (("laptop", laptop), ("phone", phone))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = DocumentStore(laptop).open(doc.id)
        assert len(final.history) == 1 + 12
        generated = {op.blocks[0].text for node in final.history.nodes[1:] for op in node.ops}
        assert generated == set(made["laptop"]) | set(made["phone"])
        final.history.verify()

    await in_thread(scenario)


async def test_an_exported_account_imports_with_its_derived_objects(devices, connect, tmp_path):
    """History segments and thumbnails have no keystore entry: the import's check derives their
    keys from their parents', and the story opens in the other account."""
    def scenario():
        laptop, _ = devices()
        store = DocumentStore(laptop)
        doc = store.create_story(title="Travels", text="Start.")
        image = store.store_image(_png(4, 4), thumbnail=_png(1, 1))
        doc.history.illustrate(IllustrationBlock(image_id=image))
        doc.history.generate(" Onwards.")
        store.save(doc)
        archive = tmp_path / "alice.tar"
        laptop.export_archive(archive)
        other = connect()
        other.register("bob", "bob's own password")
        other.import_archive(archive, PASSWORD)
        opened = DocumentStore(other).open(doc.id)
        assert opened.text == "Start. Onwards." and opened.story.title == "Travels"
        assert DocumentStore(other).open_thumbnail(image).size == (1, 1)

    await in_thread(scenario)


async def test_unknown_fields_survive_saves_and_compaction(devices):
    def scenario():
        laptop, phone = devices()
        store = DocumentStore(laptop, compact_after=1)
        doc = store.create_story(text="Start.")
        doc.story.extra["from_a_newer_client"] = {"keep": True}
        doc.content_extra["snapshot_extension"] = [1, 2]
        store.save(doc)
        doc.history.generate(" More.")
        store.save(doc)  # one segment, then folded into a new snapshot
        assert doc.segments_folded == 1
        reopened = DocumentStore(phone).open(doc.id)
        assert reopened.story.extra == {"from_a_newer_client": {"keep": True}}
        assert reopened.content_extra == {"snapshot_extension": [1, 2]}

    await in_thread(scenario)

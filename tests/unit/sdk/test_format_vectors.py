"""The SDK against the published document test vectors (docs/format-vectors.json), so that what
docs/formats.md promises to other clients is what the SDK reads and writes, byte for byte."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import pytest

from fabula_sdk import envelope, keystore
from fabula_sdk.documents import History, HistorySegment, ImageDocument, Lorebook, NewerFormatError, Preset, Story
from fabula_sdk.documents import StoryContent, codec
from fabula_wire import ObjectType

VECTORS = json.loads((Path(__file__).parents[3] / "docs" / "format-vectors.json").read_text("utf-8"))

DOCUMENT_CLASSES = {"stories": Story, "lorebooks": Lorebook, "presets": Preset}


def _plaintext(case: dict) -> bytes:
    return bytes.fromhex(case["plaintext_hex"]) if "plaintext_hex" in case else case["plaintext"].encode("utf-8")


@pytest.mark.parametrize("case", VECTORS["derived_keys"], ids=lambda case: case["id"])
def test_derived_keys(case):
    type = ObjectType(case["parent_type"])
    key = keystore.derived_key(bytes.fromhex(case["parent_key"]), type, case["id"])
    assert key.hex() == case["derived_key"]
    # Plain keyed BLAKE2b: Python's hashlib (not libsodium) must agree.
    message = type.value.encode() + b"\x00" + case["id"].encode()
    assert hashlib.blake2b(message, digest_size=32, key=bytes.fromhex(case["parent_key"]),
                           person=b"fabula/subkey/v1").hexdigest() == case["derived_key"]


@pytest.mark.parametrize("case", VECTORS["objects"], ids=lambda case: case["name"])
def test_each_document_type_encrypts_to_the_exact_bytes(case):
    type, key, plaintext = ObjectType(case["type"]), bytes.fromhex(case["data_key"]), _plaintext(case)
    payload = bytes.fromhex(case["payload"])
    assert (zlib.decompress(payload) if case["compression"] else payload) == plaintext
    blob = envelope.seal_payload(key, type, case["id"], payload, compression=case["compression"],
                                 revision=case["revision"], nonce=bytes.fromhex(case["nonce"]))
    assert blob.hex() == case["blob"]
    assert envelope.associated_data(blob[:envelope.HEADER_BYTES], type, case["id"]).hex() == case["associated_data"]
    opened = envelope.open_object(key, type, case["id"], blob)
    assert opened.plaintext == plaintext and opened.revision == case["revision"]


@pytest.mark.parametrize("case", VECTORS["objects"], ids=lambda case: case["name"])
def test_each_document_decodes_and_reencodes_to_the_same_json(case):
    plaintext = _plaintext(case)
    if case["type"] == "images":
        image = ImageDocument(plaintext).check()
        assert image.size in ((4, 6), (2, 3)) and "parameters" in image.metadata
        return
    if case["type"] == "storycontent":
        cls = HistorySegment if "_h" in case["id"] else StoryContent
        assert cls.from_bytes(plaintext).to_bytes() == plaintext
        return
    document = DOCUMENT_CLASSES[case["type"]].from_bytes(plaintext)
    assert document.to_bytes() == plaintext


def test_derived_objects_open_through_the_keystore():
    """A keystore holding only the parents' keys opens the segment and the thumbnail."""
    by_id = {case["id"]: case for case in VECTORS["objects"]}
    store = keystore.Keystore(master_key=b"\0" * 32, wrapped_master_key=b"")
    for parent in ("content-1", "image-1"):
        case = by_id[parent]
        store.entries[parent] = keystore.KeyEntry(ObjectType(case["type"]), bytes.fromhex(case["data_key"]))
    for child in ("content-1_h0", "image-1_thumb"):
        case = by_id[child]
        key = store.key_for(ObjectType(case["type"]), child)
        assert envelope.open_object(key, ObjectType(case["type"]), child, bytes.fromhex(case["blob"])).plaintext == \
            _plaintext(case)
    assert store.has_key(ObjectType.STORY_CONTENT, "content-1_h99")
    assert not store.has_key(ObjectType.IMAGE, "content-1_thumb")  # the parent is of another type
    assert not store.has_key(ObjectType.STORY_CONTENT, "content-1_x1")  # not a derived label


def test_history_rebuilds_the_text_at_every_node():
    case = VECTORS["history"]
    history = History.from_stored(StoryContent.from_json(case["snapshot"]),
                                  [HistorySegment.from_json(segment) for segment in case["segments"]])
    assert history.head == case["head"] and history.text == case["text"]
    assert history.compacted(1).to_json()["blocks"] == case["blocks"]
    assert {str(node.id): history.text_at(node.id) for node in history.nodes} == case["text_at"]
    history.verify()


def test_version_1_stories_migrate():
    case = VECTORS["migration"]
    story = Story.from_json(case["story_v1"])
    content = StoryContent.from_json(case["content_v1"])
    assert story.migrated_from == 1 and content.migrated_from == 1
    assert story.to_json() == case["story_v2"]
    assert content.to_json() == case["content_v2"]
    assert History.from_stored(content).text == case["content_v1"]["text"]


def test_unknown_fields_are_kept_and_written_back():
    case = VECTORS["unknown_fields"]
    lorebook = Lorebook.from_json(case["lorebook"])
    assert lorebook.extra == {"shared_with": ["another-client"]}
    assert lorebook.entries[0].extra == {"sticky_turns": 3}
    assert lorebook.to_bytes().decode("utf-8") == case["canonical"]
    assert json.loads(case["canonical"]) == case["lorebook"]


def test_newer_versions_are_read_but_not_written():
    newer = Preset.from_json(VECTORS["newer_version"]["preset"])
    assert newer.version == 3 and newer.name == "Gothic" and newer.extra == {"new_in_3": True}
    with pytest.raises(NewerFormatError, match="version 3"):
        codec.check_writable(newer, 2, "presets/p")


def test_malformed_fields_are_named():
    story = json.loads(VECTORS["objects"][0]["plaintext"])
    story["settings"]["sampling"]["top_k"] = "forty"
    with pytest.raises(codec.DocumentError, match=r"story\.settings\.sampling\.top_k: must be an integer"):
        Story.from_json(story)
    del story["content_id"]
    with pytest.raises(codec.DocumentError, match=r"story\.content_id: required field is missing"):
        Story.from_json(story)
    with pytest.raises(codec.DocumentError, match='format: must be "fabula-preset"'):
        Preset.from_json({"format": "fabula-lorebook", "version": 2, "name": "x"})

"""Object blobs: a ciphertext opens only as the object it was sealed for, and any change to it
is refused with DecryptionError rather than returned."""

from __future__ import annotations

import struct
import zlib

import nacl.utils
import pytest

from fabula_sdk import aead, envelope
from fabula_sdk.errors import DecryptionError
from fabula_wire import ObjectType

TEXT = ("The keeper climbed the stairs of the lighthouse every night. " * 20).encode()


@pytest.fixture
def key() -> bytes:
    return aead.new_key()


def test_round_trip_compresses_text(key):
    blob = envelope.seal_object(key, ObjectType.STORY_CONTENT, "s1", TEXT, revision=3)
    assert blob[:4] == b"FBLO" and blob[4] == 1 and blob[5] == envelope.COMPRESSION_ZLIB
    assert len(blob) < len(TEXT)
    opened = envelope.open_object(key, ObjectType.STORY_CONTENT, "s1", blob)
    assert opened.plaintext == TEXT and opened.revision == 3


def test_incompressible_content_is_stored_uncompressed(key):
    noise = nacl.utils.random(128)
    blob = envelope.seal_object(key, ObjectType.IMAGE, "i1", noise, revision=1)
    assert blob[5] == envelope.COMPRESSION_NONE
    assert len(blob) == len(noise) + envelope.OVERHEAD_BYTES
    assert envelope.open_object(key, ObjectType.IMAGE, "i1", blob).plaintext == noise


def test_empty_plaintext(key):
    blob = envelope.seal_object(key, ObjectType.PRESET, "p", b"", revision=1)
    assert envelope.open_object(key, ObjectType.PRESET, "p", blob).plaintext == b""


def test_fresh_nonce_every_time(key):
    first = envelope.seal_object(key, ObjectType.STORY, "s", TEXT, revision=1)
    second = envelope.seal_object(key, ObjectType.STORY, "s", TEXT, revision=1)
    assert first != second


@pytest.mark.parametrize("type, id", [(ObjectType.STORY, "s1"),  # same id, other type
                                      (ObjectType.STORY_CONTENT, "s2"),  # other id
                                      (ObjectType.STORY_CONTENT, "S1")])  # ids are case-sensitive
def test_bound_to_type_and_id(key, type, id):
    blob = envelope.seal_object(key, ObjectType.STORY_CONTENT, "s1", TEXT, revision=1)
    with pytest.raises(DecryptionError, match="authentication failed"):
        envelope.open_object(key, type, id, blob)


def test_wrong_key(key):
    blob = envelope.seal_object(key, ObjectType.STORY, "s1", TEXT, revision=1)
    with pytest.raises(DecryptionError):
        envelope.open_object(aead.new_key(), ObjectType.STORY, "s1", blob)


def test_every_byte_is_authenticated(key):
    blob = envelope.seal_object(key, ObjectType.LOREBOOK, "l1", b"a lorebook entry", revision=2)
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(DecryptionError):
            envelope.open_object(key, ObjectType.LOREBOOK, "l1", bytes(tampered))


def test_header_fields_are_bound(key):
    """Rewriting the version, compression or revision (and nothing else) is detected."""
    blob = envelope.seal_object(key, ObjectType.STORY, "s1", TEXT, revision=5)
    magic, version, compression, revision = struct.unpack_from(">4sBBQ", blob)
    for changed in [(magic, version, envelope.COMPRESSION_NONE, revision), (magic, version, compression, 6),
                    (magic, version, compression, 4)]:
        forged = struct.pack(">4sBBQ", *changed) + blob[envelope.HEADER_BYTES:]
        with pytest.raises(DecryptionError, match="authentication failed"):
            envelope.open_object(key, ObjectType.STORY, "s1", forged)
    future = struct.pack(">4sBBQ", magic, 2, compression, revision) + blob[envelope.HEADER_BYTES:]
    with pytest.raises(DecryptionError, match="version 2 is not supported"):
        envelope.open_object(key, ObjectType.STORY, "s1", future)


@pytest.mark.parametrize("blob", [b"", b"FBLO", b"x" * 100, b"FBLO\x01\x01" + bytes(8) + bytes(24) + bytes(15)])
def test_malformed_blobs(key, blob):
    with pytest.raises(DecryptionError):
        envelope.open_object(key, ObjectType.STORY, "s1", blob)


def test_truncated_blob(key):
    blob = envelope.seal_object(key, ObjectType.STORY, "s1", TEXT, revision=1)
    with pytest.raises(DecryptionError):
        envelope.open_object(key, ObjectType.STORY, "s1", blob[:-1])


def test_authentic_but_corrupt_compression_is_refused(key):
    blob = envelope.seal_payload(key, ObjectType.STORY, "s1", b"not zlib at all", compression=envelope.COMPRESSION_ZLIB,
                                 revision=1, nonce=aead.new_nonce())
    with pytest.raises(DecryptionError, match="compressed content is corrupt"):
        envelope.open_object(key, ObjectType.STORY, "s1", blob)


def test_inflation_is_bounded(key, monkeypatch):
    monkeypatch.setattr(envelope, "MAX_PLAINTEXT_BYTES", 1000)
    bomb = zlib.compress(bytes(100_000))
    blob = envelope.seal_payload(key, ObjectType.STORY, "s1", bomb, compression=envelope.COMPRESSION_ZLIB,
                                 revision=1, nonce=aead.new_nonce())
    with pytest.raises(DecryptionError, match="inflates beyond 1000 bytes"):
        envelope.open_object(key, ObjectType.STORY, "s1", blob)


def test_bad_arguments_are_refused(key):
    with pytest.raises(ValueError, match="revision"):
        envelope.seal_object(key, ObjectType.STORY, "s1", b"x", revision=-1)
    with pytest.raises(ValueError, match="compression"):
        envelope.seal_payload(key, ObjectType.STORY, "s1", b"x", compression=7, revision=1, nonce=aead.new_nonce())

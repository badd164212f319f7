"""The keystore: master key wrapping, body sealing, password-change re-wrap, merging."""

from __future__ import annotations

import json

import pytest

from fabula_sdk import aead, kdf, keystore
from fabula_sdk.errors import KeystoreError
from fabula_sdk.keystore import Keystore
from fabula_sdk.types import MINIMUM_KDF
from fabula_wire import ObjectType


@pytest.fixture(scope="module")
def password_keys():
    salt = kdf.new_salt()
    return kdf.derive_keys("first password", salt, MINIMUM_KDF), kdf.derive_keys("second password", salt, MINIMUM_KDF)


def test_derived_keys_are_independent(password_keys):
    keys, _ = password_keys
    assert len(keys.auth_key) == len(keys.key_encryption_key) == 32
    assert keys.auth_key != keys.key_encryption_key
    assert "hidden" in repr(keys) and keys.auth_key.hex() not in repr(keys)


def test_wrap_and_unwrap(password_keys):
    keys, other = password_keys
    store = Keystore.create(keys.key_encryption_key)
    data_key = store.add(ObjectType.STORY, "story-1")
    blob = store.seal()
    assert blob[:5] == b"FBLK\x01"
    opened = Keystore.open(blob, key_encryption_key=keys.key_encryption_key)
    assert opened.master_key == store.master_key
    assert opened.key_for(ObjectType.STORY, "story-1") == data_key
    # Without the password, the master key (kept by the CLI) opens it too.
    assert Keystore.open(blob, master_key=store.master_key).key_for(ObjectType.STORY, "story-1") == data_key
    with pytest.raises(KeystoreError, match="wrong password"):
        Keystore.open(blob, key_encryption_key=other.key_encryption_key)
    with pytest.raises(KeystoreError, match="does not open with this master key"):
        Keystore.open(blob, master_key=aead.new_key())


def test_nothing_in_the_blob_is_plaintext(password_keys):
    keys, _ = password_keys
    store = Keystore.create(keys.key_encryption_key)
    data_key = store.add(ObjectType.STORY, "a-very-recognisable-id")
    blob = store.seal()
    for secret in (store.master_key, data_key, b"a-very-recognisable-id", b"stories", keys.key_encryption_key):
        assert secret not in blob


def test_password_change_rewraps_only_the_master_key(password_keys):
    keys, new_keys = password_keys
    store = Keystore.create(keys.key_encryption_key)
    store.add(ObjectType.STORY_CONTENT, "c1")
    blob = store.seal()
    rewrapped = keystore.rewrap(blob, keys.key_encryption_key, new_keys.key_encryption_key)
    assert rewrapped[:5] == blob[:5]
    assert rewrapped[keystore.BODY_OFFSET:] == blob[keystore.BODY_OFFSET:]  # the body is untouched
    assert rewrapped[5:keystore.BODY_OFFSET] != blob[5:keystore.BODY_OFFSET]
    reopened = Keystore.open(rewrapped, key_encryption_key=new_keys.key_encryption_key)
    assert reopened.master_key == store.master_key and reopened.entries == store.entries
    with pytest.raises(KeystoreError):
        Keystore.open(rewrapped, key_encryption_key=keys.key_encryption_key)
    with pytest.raises(KeystoreError):  # re-wrapping needs the current password
        keystore.rewrap(blob, new_keys.key_encryption_key, keys.key_encryption_key)


def test_tampering_anywhere_is_refused(password_keys):
    keys, _ = password_keys
    store = Keystore.create(keys.key_encryption_key)
    store.add(ObjectType.IMAGE, "i1")
    blob = store.seal()
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x80
        with pytest.raises(KeystoreError):
            Keystore.open(bytes(tampered), key_encryption_key=keys.key_encryption_key)


def test_sections_cannot_be_swapped(password_keys):
    """The wrapped master key and the body have different associated data: one cannot pass as the other."""
    keys, _ = password_keys
    store = Keystore.create(keys.key_encryption_key)
    blob = store.seal()
    wrapped = blob[5:keystore.BODY_OFFSET]
    forged = blob[:keystore.BODY_OFFSET] + wrapped
    with pytest.raises(KeystoreError):
        Keystore.open(forged, key_encryption_key=keys.key_encryption_key)


def test_ids_are_unique_across_types(password_keys):
    keys, _ = password_keys
    store = Keystore.create(keys.key_encryption_key)
    first = store.add(ObjectType.STORY, "x")
    assert store.add(ObjectType.STORY, "x") == first
    with pytest.raises(KeystoreError, match="already used by a stories object"):
        store.add(ObjectType.STORY_CONTENT, "x")
    with pytest.raises(KeystoreError, match="belongs to a stories object"):
        store.key_for(ObjectType.LOREBOOK, "x")
    with pytest.raises(KeystoreError, match="no key"):
        store.key_for(ObjectType.STORY, "y")
    with pytest.raises(ValueError, match="object id"):
        store.add(ObjectType.STORY, "not/an id")


def test_merge_keeps_both_sides_and_the_other_side_wins(password_keys):
    keys, other_keys = password_keys
    mine, theirs = Keystore.create(keys.key_encryption_key), Keystore.create(other_keys.key_encryption_key)
    mine.add(ObjectType.STORY, "only-mine")
    mine.add(ObjectType.STORY, "both")
    theirs_key = theirs.add(ObjectType.STORY, "both")
    theirs.add(ObjectType.PRESET, "only-theirs")
    mine.merge(theirs)
    assert set(mine.entries) == {"only-mine", "both", "only-theirs"}
    assert mine.key_for(ObjectType.STORY, "both") == theirs_key
    # Still sealed under its own master key and password.
    assert Keystore.open(mine.seal(), key_encryption_key=keys.key_encryption_key).entries == mine.entries


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'{"format": "other", "version": 1, "keys": {}}',
    b'{"format": "fabula-keystore", "version": 2, "keys": {}}',
    b'{"format": "fabula-keystore", "version": 1, "keys": []}',
    b'{"format": "fabula-keystore", "version": 1, "keys": {"a": {"type": "novels", "key": "AAAA"}}}',
    b'{"format": "fabula-keystore", "version": 1, "keys": {"a": {"type": "stories", "key": "AAAA"}}}',
    b'{"format": "fabula-keystore", "version": 1, "keys": {"a b": {"type": "stories", "key": "AAAA"}}}',
])
def test_malformed_bodies_are_refused(password_keys, body):
    keys, _ = password_keys
    store = Keystore.create(keys.key_encryption_key)
    nonce = aead.new_nonce()
    blob = keystore.HEADER + store.wrapped_master_key + nonce + aead.seal(store.master_key, nonce, body, keystore.BODY_AD)
    with pytest.raises(KeystoreError):
        Keystore.open(blob, key_encryption_key=keys.key_encryption_key)


def test_body_is_canonical_json(password_keys):
    keys, _ = password_keys
    store = Keystore.create(keys.key_encryption_key)
    store.add(ObjectType.STORY, "b")
    store.add(ObjectType.STORY, "a")
    body = store.body().decode()
    assert json.loads(body)["format"] == "fabula-keystore"
    assert body.index('"a"') < body.index('"b"') and ", " not in body


@pytest.mark.parametrize("blob, message", [(b"", "too short"), (b"XXXX\x01" + bytes(120), "not a Fabula keystore"),
                                           (b"FBLK\x09" + bytes(120), "version 9")])
def test_malformed_blobs(password_keys, blob, message):
    keys, _ = password_keys
    with pytest.raises(KeystoreError, match=message):
        Keystore.open(blob, key_encryption_key=keys.key_encryption_key)


def test_bad_kdf_inputs():
    with pytest.raises(ValueError, match="salt must be 16 bytes"):
        kdf.derive_keys("pw", b"short", MINIMUM_KDF)
    with pytest.raises(ValueError, match="password"):
        kdf.derive_keys("", kdf.new_salt(), MINIMUM_KDF)
    with pytest.raises(ValueError, match="kdf.memlimit"):
        kdf.derive_keys("pw", kdf.new_salt(), type(MINIMUM_KDF)(1, 10))


def test_the_kdf_floor_refuses_cheaper_costs_in_either_dimension():
    from fabula_sdk.errors import WeakKdfError
    from fabula_sdk.types import KDF_FLOOR, KdfParams

    assert (KDF_FLOOR.opslimit, KDF_FLOOR.memlimit) == (2, 64 * 1024 * 1024)
    assert kdf.require_floor(KDF_FLOOR, KDF_FLOOR, asked_by="the server") == KDF_FLOOR
    for cheaper in (KdfParams(1, KDF_FLOOR.memlimit), KdfParams(KDF_FLOOR.opslimit, KDF_FLOOR.memlimit - 1024),
                    MINIMUM_KDF):
        with pytest.raises(WeakKdfError, match="the server asked"):
            kdf.require_floor(cheaper, KDF_FLOOR, asked_by="the server")
    assert kdf.require_floor(MINIMUM_KDF, MINIMUM_KDF, asked_by="a test server") == MINIMUM_KDF

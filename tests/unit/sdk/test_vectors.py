"""The SDK against the published test vectors (docs/encryption-vectors.json), so that what
docs/encryption.md promises to other clients is what the SDK does, byte for byte."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import pytest

from fabula_sdk import envelope, kdf, keystore
from fabula_sdk.types import KdfParams
from fabula_wire import ObjectType

VECTORS = json.loads((Path(__file__).parents[3] / "docs" / "encryption-vectors.json").read_text("utf-8"))


def _hex(value: str) -> bytes:
    return bytes.fromhex(value)


@pytest.mark.parametrize("case", VECTORS["kdf"], ids=lambda case: f"ops{case['opslimit']}-{case['password'][:8]}")
def test_key_derivation(case):
    salt, params = _hex(case["salt"]), KdfParams(case["opslimit"], case["memlimit"])
    assert kdf.password_bytes(case["password"]) == _hex(case["password_nfc_utf8"])
    root = kdf.root_key(case["password"], salt, params)
    assert root.hex() == case["argon2id_output"]
    keys = kdf.derive_keys(case["password"], salt, params)
    assert keys.auth_key.hex() == case["auth_key"]
    assert keys.key_encryption_key.hex() == case["key_encryption_key"]
    # The subkeys are plain keyed BLAKE2b with a personalisation string: Python's own hashlib
    # (another implementation than libsodium) must agree.
    assert hashlib.blake2b(b"", digest_size=32, key=root, person=b"fabula/authkey/1").digest() == keys.auth_key
    assert hashlib.blake2b(b"", digest_size=32, key=root, person=b"fabula/wrapkey/1").digest() == keys.key_encryption_key


def test_passwords_are_nfc_normalised():
    case = VECTORS["kdf"][1]
    assert "\u0301" in case["password"]  # typed with a combining accent
    precomposed = case["password"].replace("e\u0301", "\u00e9")
    params = KdfParams(case["opslimit"], case["memlimit"])
    assert kdf.derive_keys(precomposed, _hex(case["salt"]), params).auth_key.hex() == case["auth_key"]


@pytest.mark.parametrize("case", VECTORS["master_key_wrap"])
def test_master_key_wrap(case):
    wrapped = keystore.wrap_master_key(_hex(case["master_key"]), _hex(case["key_encryption_key"]), _hex(case["nonce"]))
    assert wrapped.hex() == case["wrapped"]
    assert keystore.MASTER_KEY_AD.hex() == case["associated_data"]


@pytest.mark.parametrize("case", VECTORS["keystore"])
def test_keystore_blob(case):
    blob = _hex(case["blob"])
    opened = keystore.Keystore.open(blob, key_encryption_key=_hex(case["key_encryption_key"]))
    assert opened.master_key.hex() == case["master_key"]
    assert opened.body().decode("utf-8") == case["body"]
    assert opened.seal(_hex(case["body_nonce"])) == blob
    assert keystore.BODY_AD.hex() == case["body_associated_data"]


@pytest.mark.parametrize("case", VECTORS["rewrap"])
def test_rewrap(case):
    rewrapped = keystore.rewrap(_hex(case["blob"]), _hex(case["old_key_encryption_key"]),
                                _hex(case["new_key_encryption_key"]), _hex(case["nonce"]))
    assert rewrapped.hex() == case["rewrapped"]


@pytest.mark.parametrize("case", VECTORS["objects"], ids=lambda case: f"{case['type']}/{case['id']}")
def test_object_blob(case):
    type, key = ObjectType(case["type"]), _hex(case["data_key"])
    payload = _hex(case["payload"])
    if case["compression"] == envelope.COMPRESSION_ZLIB:
        assert zlib.decompress(payload) == case["plaintext"].encode("utf-8")
    else:
        assert payload == case["plaintext"].encode("utf-8")
    blob = envelope.seal_payload(key, type, case["id"], payload, compression=case["compression"],
                                 revision=case["revision"], nonce=_hex(case["nonce"]))
    assert blob.hex() == case["blob"]
    assert envelope.associated_data(blob[:envelope.HEADER_BYTES], type, case["id"]).hex() == case["associated_data"]
    opened = envelope.open_object(key, type, case["id"], blob)
    assert opened.plaintext.decode("utf-8") == case["plaintext"]
    assert opened.revision == case["revision"]

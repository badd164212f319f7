"""The keystore: the master key wrapped by the password, and every object's data key under it.

Byte format (docs/encryption.md, "Keystore blob"):

    offset size  field
    0      4     magic "FBLK"
    4      1     format version (1)
    5      24    nonce of the wrapped master key
    29     48    the 32-byte master key sealed under the key-encryption key, then its tag
    77     24    nonce of the body
    101    n+16  the body sealed under the master key, then its tag

Associated data: bytes 0-4 followed by "fabula/master-key" (the wrapped master key) or by
"fabula/keystore" (the body). The body does not depend on the wrapping, so a password change
replaces bytes 5-76 only. The body is UTF-8 JSON:

    {"format": "fabula-keystore", "version": 1,
     "keys": {"<object id>": {"type": "stories", "key": "<32 bytes, standard base64>"}}}

Derived objects (docs/formats.md, "Derived objects") have no entry: the id `<parent id>_<label>`,
with label `h<n>` (a story content's history segment n) or `thumb` (an image's thumbnail), opens
with a key derived from the parent's data key, so writing one never rewrites the keystore:

    key = BLAKE2b-256(message = type ‖ 0x00 ‖ id, key = parent's data key, personal = "fabula/subkey/v1")

The parent must be of the same type; the type and id in the message make every derived key
distinct, and the envelope's associated data binds the object to its type and id as always.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field

import nacl.hash
from nacl.encoding import RawEncoder

from fabula_sdk import aead
from fabula_sdk.errors import DecryptionError, KeystoreError
from fabula_wire import ObjectType

MAGIC = b"FBLK"
VERSION = 1
HEADER = MAGIC + bytes([VERSION])
WRAPPED_MASTER_BYTES = aead.NONCE_BYTES + aead.KEY_BYTES + aead.TAG_BYTES  # 72
BODY_OFFSET = len(HEADER) + WRAPPED_MASTER_BYTES  # 77
MASTER_KEY_AD = HEADER + b"fabula/master-key"
BODY_AD = HEADER + b"fabula/keystore"
BODY_FORMAT = "fabula-keystore"
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
DERIVED_KEY_PERSONAL = b"fabula/subkey/v1"
assert len(DERIVED_KEY_PERSONAL) == 16  # BLAKE2b's personal field, exactly
DERIVED_ID = re.compile(r"(?P<parent>[A-Za-z0-9_-]+)_(?P<label>h(?:0|[1-9][0-9]*)|thumb)")


def derivation_parent(id: str) -> str | None:
    """The parent id of a derived object id (`<parent>_h<n>`, `<parent>_thumb`), else None."""
    match = DERIVED_ID.fullmatch(id)
    return match.group("parent") if match else None


def derived_key(parent_key: bytes, type: ObjectType, id: str) -> bytes:
    """The data key of derived object `type`/`id` from its parent's data key."""
    message = type.value.encode("ascii") + b"\x00" + id.encode("ascii")
    return nacl.hash.blake2b(message, digest_size=aead.KEY_BYTES, key=parent_key, person=DERIVED_KEY_PERSONAL,
                             encoder=RawEncoder)


@dataclass(frozen=True, repr=False)
class KeyEntry:
    type: ObjectType
    key: bytes

    def __repr__(self) -> str:
        return f"KeyEntry({self.type.value}, <hidden>)"


def check_object_id(id: str) -> str:
    if not isinstance(id, str) or not ID_PATTERN.fullmatch(id):
        raise ValueError(f"object id must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-', not {id!r}")
    return id


def wrap_master_key(master_key: bytes, key_encryption_key: bytes, nonce: bytes | None = None) -> bytes:
    nonce = nonce or aead.new_nonce()
    return nonce + aead.seal(key_encryption_key, nonce, master_key, MASTER_KEY_AD)


def unwrap_master_key(blob: bytes, key_encryption_key: bytes) -> bytes:
    _check_header(blob)
    wrapped = blob[len(HEADER):BODY_OFFSET]
    try:
        return aead.open_(key_encryption_key, wrapped[:aead.NONCE_BYTES], wrapped[aead.NONCE_BYTES:],
                          MASTER_KEY_AD, "keystore master key")
    except DecryptionError:
        raise KeystoreError("the keystore's master key does not open with this password "
                            "(wrong password, or the keystore was tampered with)") from None


def rewrap(blob: bytes, old_key_encryption_key: bytes, new_key_encryption_key: bytes,
           nonce: bytes | None = None) -> bytes:
    """The same keystore with its master key wrapped under a new key-encryption key (a password
    change): only bytes 5-76 change; the body and every data key stay as they are."""
    master_key = unwrap_master_key(blob, old_key_encryption_key)
    return HEADER + wrap_master_key(master_key, new_key_encryption_key, nonce) + blob[BODY_OFFSET:]


def _check_header(blob: bytes) -> None:
    if len(blob) < BODY_OFFSET + aead.NONCE_BYTES + aead.TAG_BYTES:
        raise KeystoreError(f"the keystore is {len(blob)} bytes, too short to be a Fabula keystore")
    if blob[:4] != MAGIC:
        raise KeystoreError(f"not a Fabula keystore (magic {blob[:4]!r})")
    if blob[4] != VERSION:
        raise KeystoreError(f"keystore format version {blob[4]} is not supported (this SDK reads {VERSION})")


@dataclass(repr=False)
class Keystore:
    """The decrypted keystore. `wrapped_master_key` is kept as read so that saving the keystore
    needs only the master key, not the password."""

    master_key: bytes
    wrapped_master_key: bytes
    entries: dict[str, KeyEntry] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Keystore({len(self.entries)} keys)"

    @classmethod
    def create(cls, key_encryption_key: bytes) -> Keystore:
        """A new, empty keystore with a fresh random master key."""
        master_key = aead.new_key()
        return cls(master_key=master_key, wrapped_master_key=wrap_master_key(master_key, key_encryption_key))

    @classmethod
    def open(cls, blob: bytes, *, key_encryption_key: bytes | None = None,
             master_key: bytes | None = None) -> Keystore:
        """Decrypt `blob` with the password's key-encryption key, or with a master key kept from
        an earlier unlock (the CLI's saved session)."""
        if key_encryption_key is not None:
            master_key = unwrap_master_key(blob, key_encryption_key)
        elif master_key is None:
            raise ValueError("give key_encryption_key or master_key")
        _check_header(blob)
        nonce = blob[BODY_OFFSET:BODY_OFFSET + aead.NONCE_BYTES]
        try:
            body = aead.open_(master_key, nonce, blob[BODY_OFFSET + aead.NONCE_BYTES:], BODY_AD, "keystore")
        except DecryptionError:
            raise KeystoreError("the keystore does not open with this master key "
                                "(another account's keystore, or tampered with)") from None
        return cls(master_key=master_key, wrapped_master_key=blob[len(HEADER):BODY_OFFSET],
                   entries=parse_body(body))

    def copy(self) -> Keystore:
        return Keystore(master_key=self.master_key, wrapped_master_key=self.wrapped_master_key,
                        entries=dict(self.entries))

    def seal(self, nonce: bytes | None = None) -> bytes:
        nonce = nonce or aead.new_nonce()
        return HEADER + self.wrapped_master_key + nonce + aead.seal(self.master_key, nonce, self.body(), BODY_AD)

    def body(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces), so equal keystores serialise identically."""
        keys = {id: {"type": entry.type.value, "key": base64.b64encode(entry.key).decode("ascii")}
                for id, entry in self.entries.items()}
        return json.dumps({"format": BODY_FORMAT, "version": VERSION, "keys": keys},
                          sort_keys=True, separators=(",", ":")).encode("utf-8")

    def has_key(self, type: ObjectType, id: str) -> bool:
        """Whether `key_for` can give a key for this id: an entry, or a derivable derived object."""
        return id in self.entries or self._parent_entry(type, id) is not None

    def _parent_entry(self, type: ObjectType, id: str) -> KeyEntry | None:
        parent = derivation_parent(id)
        entry = self.entries.get(parent) if parent is not None else None
        return entry if entry is not None and entry.type == type else None

    def key_for(self, type: ObjectType, id: str) -> bytes:
        entry = self.entries.get(id)
        if entry is None:
            parent = self._parent_entry(type, id)
            if parent is not None:
                return derived_key(parent.key, type, id)
            raise KeystoreError(f"the keystore holds no key for {type.value}/{id}")
        if entry.type != type:
            raise KeystoreError(f"the keystore's key for id {id} belongs to a {entry.type.value} object, "
                                f"not {type.value}")
        return entry.key

    def add(self, type: ObjectType, id: str) -> bytes:
        """A new random data key for object `type`/`id`. Ids are unique across types: the map is
        keyed by id alone."""
        check_object_id(id)
        existing = self.entries.get(id)
        if existing is not None:
            if existing.type != type:
                raise KeystoreError(f"id {id} is already used by a {existing.type.value} object")
            return existing.key
        key = aead.new_key()
        self.entries[id] = KeyEntry(type, key)
        return key

    def merge(self, other: Keystore) -> None:
        """Take every key of `other`; where both hold an id, `other` wins (its object is the one
        about to be stored)."""
        self.entries.update(other.entries)


def parse_body(body: bytes) -> dict[str, KeyEntry]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise KeystoreError(f"the keystore body is not UTF-8 JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != BODY_FORMAT:
        raise KeystoreError(f'the keystore body must be a JSON object with "format": "{BODY_FORMAT}"')
    if data.get("version") != VERSION:
        raise KeystoreError(f"keystore body version {data.get('version')!r} is not supported")
    keys = data.get("keys")
    if not isinstance(keys, dict):
        raise KeystoreError('the keystore body\'s "keys" must be an object')
    entries: dict[str, KeyEntry] = {}
    for id, entry in keys.items():
        where = f"keystore keys[{id!r}]"
        if not ID_PATTERN.fullmatch(id) or not isinstance(entry, dict):
            raise KeystoreError(f"{where}: malformed entry")
        try:
            type = ObjectType(entry.get("type"))
            key = base64.b64decode(entry.get("key", ""), validate=True)
        except (ValueError, TypeError, binascii.Error):
            raise KeystoreError(f"{where}: malformed type or key") from None
        if len(key) != aead.KEY_BYTES:
            raise KeystoreError(f"{where}: key must be {aead.KEY_BYTES} bytes, not {len(key)}")
        entries[id] = KeyEntry(type, key)
    return entries
